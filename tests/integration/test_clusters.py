"""Several clusters behind one appliance: each model goes to the cluster that serves it."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.conftest import ROOT, Cluster, free_port, start_standin, stop, write_static_config

pytestmark = pytest.mark.integration

KEY = "sk-two-clusters-" + "c" * 20


def test_models_merge_and_requests_route_to_their_cluster(cluster: Cluster, tmp_path: Path) -> None:
    other = start_standin("other-chat", "chat")
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        config_a = write_static_config(
            tmp_path / "a",
            [
                ("standin-chat", "127.0.0.1", cluster.chat.port, cluster.chat.token, ["chat", "completions"]),
            ],
        )
        config_b = write_static_config(
            tmp_path / "b",
            [
                ("other-chat", "127.0.0.1", other.port, other.token, ["chat"]),
                ("standin-embed", "127.0.0.1", cluster.embed.port, cluster.embed.token, ["embeddings"]),
            ],
        )
        port = free_port()
        clusters = ""
        for name, config in (("alpha", config_a), ("beta", config_b)):
            gate = [sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(config), "--local-pipe"]
            clusters += f'[[clusters]]\nname = "{name}"\ntransport = "local"\ngate_command = {json.dumps(gate)}\n'
        appliance = tmp_path / "appliance.toml"
        appliance.write_text(
            f"[server]\nport = {port}\n{clusters}"
            f'[[api_keys]]\nuser = "u"\nkey_id = "k"\nsha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
            "[access]\nunsafe_allow_all = true\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(appliance)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                time.sleep(0.1)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0) as client:
                assert {m.id for m in client.models.list()} == {"standin-chat", "other-chat", "standin-embed"}
                served_before = other.stats()["served"]
                for model in ("standin-chat", "other-chat"):
                    answer = client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2
                    )
                    assert answer.model == model
                assert other.stats()["served"] == served_before + 1
                assert len(client.embeddings.create(model="standin-embed", input="x").data) == 1
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    finally:
        stop(other.process)
