"""``sluice status``: clusters, SSH sessions, models and their state, the hold queue, quota refusals.

    sluice status --config /etc/sluice/appliance.toml
    sluice status --url http://127.0.0.1:8080 --token-file metrics.token --json

It reads the running appliance's ``/metrics`` with the metrics token: the
endpoint operators already protect and scrape, so there is no second admin
surface to secure, and what ``status`` shows is what the dashboard shows.
With ``--config`` it finds the address (the admin listener when there is one,
else the server) and the token file in the configuration.  The token is read
from a file, never from the command line (other users can read command lines).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["Sample", "add_arguments", "parse_exposition", "run", "status_document", "format_status"]

# Seconds to wait for the appliance (a scrape asks each cluster's gate, bounded by its own timeout).
FETCH_TIMEOUT: Final = 10.0

# The most of an answer read: a /metrics page is kilobytes, not megabytes.
MAX_PAGE: Final = 8 * 1024 * 1024

# One sample line of the text exposition format: name, optional {labels}, value (timestamps unused).
_SAMPLE: Final = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?")
_LABEL: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_exposition(text: str) -> list[Sample]:
    """The samples of a Prometheus text page (comments skipped; a line that does not parse is skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line.strip())
        if match is None:
            continue
        labels = {m.group(1): _unescape(m.group(2)) for m in _LABEL.finditer(match.group(2) or "")}
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        samples.append(Sample(match.group(1), labels, value))
    return samples


def _by(samples: list[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


def status_document(samples: list[Sample]) -> dict[str, Any]:
    """What ``sluice status`` shows, from the samples of one scrape."""
    clusters: dict[str, dict[str, Any]] = {}
    for sample in _by(samples, "sluice_cluster_up"):
        clusters[sample.labels.get("cluster", "")] = {"up": sample.value == 1}
    for key in ("sessions", "streams", "slots", "reconnects_total", "connect_failures_total"):
        for sample in _by(samples, f"sluice_gate_{key}"):
            clusters.setdefault(sample.labels.get("cluster", ""), {})[key.removesuffix("_total")] = int(sample.value)
    models: dict[tuple[str, str], dict[str, Any]] = {}

    def model(sample: Sample) -> dict[str, Any]:
        key = (sample.labels.get("cluster", ""), sample.labels.get("model", ""))
        return models.setdefault(
            key,
            {
                "cluster": key[0],
                "model": key[1],
                "ready": False,
                "instances_ready": 0,
                "instances_starting": 0,
                "held": 0,
                "in_flight": 0,
            },
        )

    for sample in _by(samples, "sluice_model_ready"):
        model(sample)["ready"] = sample.value == 1
    for sample in _by(samples, "sluice_model_instances"):
        model(sample)["instances_" + sample.labels.get("state", "")] = int(sample.value)
    for sample in _by(samples, "sluice_gate_held_requests"):
        model(sample)["held"] = int(sample.value)
    for sample in _by(samples, "sluice_gate_requests_in_flight"):
        model(sample)["in_flight"] = int(sample.value)
    refusals: dict[str, float] = defaultdict(float)
    for sample in _by(samples, "sluice_quota_rejections_total"):
        refusals[f"{sample.labels.get('limit', '')}/{sample.labels.get('scope', '')}"] += sample.value
    requests = sum(s.value for s in _by(samples, "sluice_requests_total"))
    backlog = sum(s.value for s in _by(samples, "sluice_accounting_backlog"))
    return {
        "clusters": [{"cluster": name, **info} for name, info in sorted(clusters.items())],
        "models": [models[k] for k in sorted(models)],
        "queue": {
            "held": sum(m["held"] for m in models.values()),
            "in_flight": int(sum(s.value for s in _by(samples, "sluice_requests_in_flight"))),
        },
        "quota_refusals": {k: int(v) for k, v in sorted(refusals.items())},
        "requests_total": int(requests),
        "accounting_backlog": int(backlog),
    }


def _table(headers: list[str], rows: list[list[object]]) -> list[str]:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return lines


def format_status(document: dict[str, Any]) -> str:
    lines = ["CLUSTERS"]
    lines += _table(
        ["CLUSTER", "GATE", "SESSIONS", "STREAMS", "RECONNECTS", "FAILURES"],
        [
            [
                c["cluster"],
                "up" if c.get("up") else "DOWN",
                f"{c.get('sessions', 0)}/{c['slots']}" if "slots" in c else c.get("sessions", 0),
                c.get("streams", 0),
                c.get("reconnects"),
                c.get("connect_failures"),
            ]
            for c in document["clusters"]
        ],
    )
    lines += ["", "MODELS"]
    lines += _table(
        ["CLUSTER", "MODEL", "STATE", "READY", "STARTING", "HELD", "IN_FLIGHT"],
        [
            [
                m["cluster"],
                m["model"],
                "ready" if m["ready"] else ("starting" if m["instances_starting"] else "down"),
                m["instances_ready"],
                m["instances_starting"],
                m["held"],
                m["in_flight"],
            ]
            for m in document["models"]
        ],
    )
    queue = document["queue"]
    lines += ["", f"QUEUE  held at the gates: {queue['held']}  in flight at this appliance: {queue['in_flight']}"]
    refusals = document["quota_refusals"]
    lines += [
        "",
        "QUOTA REFUSALS (since start)  " + ("  ".join(f"{k}: {v}" for k, v in refusals.items()) if refusals else "none"),
    ]
    lines += [
        f"requests answered since start: {document['requests_total']}; "
        f"accounting rows not yet committed: {document['accounting_backlog']}"
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the appliance's TOML configuration (its address and [metrics] token_file)")
    where.add_argument("--url", help="the appliance's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token-file", help="a file holding the metrics token (with --url)")
    parser.add_argument("--json", action="store_true", help="one JSON document")


def _target(args: argparse.Namespace) -> tuple[str, Path | None]:
    if args.url is not None:
        return args.url, None if args.token_file is None else Path(args.token_file)
    from .settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    metrics = settings.metering.metrics
    host, port = metrics.admin_bind or (settings.server.host, settings.server.port)
    if host in ("0.0.0.0", "::", ""):  # nosec B104 (a listening address, mapped to the local one to connect)
        host = "127.0.0.1"
    token = Path(args.token_file) if args.token_file else metrics.token_file
    return f"http://{host}:{port}", token


def fetch_metrics(base_url: str, token_file: Path | None) -> str:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError("the URL must start with http:// or https://")
    headers = {}
    if token_file is not None:
        from .auth.secret import read_secret_file

        headers["Authorization"] = "Bearer " + read_secret_file(token_file, "metrics token", min_length=16).reveal()
    request = urllib.request.Request(base_url.rstrip("/") + "/metrics", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as answer:  # nosec B310 (http(s) checked above)
            page: bytes = answer.read(MAX_PAGE)
            return page.decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        hint = {
            401: "the metrics token was refused",
            403: "/metrics is closed (no [metrics] token_file)",
            404: "no /metrics here (is it on the admin listener?)",
        }.get(exc.code, f"HTTP {exc.code}")
        raise ValueError(hint) from None
    except (urllib.error.URLError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"cannot reach {base_url}: {reason}") from None


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        url, token = _target(args)
        document = status_document(parse_exposition(fetch_metrics(url, token)))
    except (OSError, ValueError) as exc:
        print(f"sluice status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        out.write(format_status(document) + "\n")
    return 0
