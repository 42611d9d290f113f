"""A stand-in model's own counters, read the way the gate reaches it.

A job listed with a pin serves mutual TLS (:mod:`cluster.tls`): the counters
are read with the gate's client certificate from ``gate-tls`` beside the
routing table, and the server is checked by its pin.  One listed without a pin
serves plain HTTP (``unsafe_plain_http``)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.tls import check_pin, client_context, gate_identity

__all__ = ["gate_tls", "instance_stats", "served"]


def gate_tls(tls_dir: Path) -> ssl.SSLContext:
    """The gate's client certificate (without it a job answers nothing, on any path); the server's
    pin must still be checked on each connection."""
    return client_context(gate_identity(tls_dir))


def instance_stats(instance: Mapping[str, Any], tls_dir: Path) -> dict[str, Any]:
    """``GET /stats`` of one routing-table instance."""
    host, port, pin = instance["host"], int(instance["port"]), instance.get("pin")
    if pin is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=5)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=gate_tls(tls_dir))
    try:
        connection.connect()
        if pin is not None and not check_pin(connection.sock, pin):  # type: ignore[arg-type]
            raise ConnectionError(f"{host}:{port} showed a certificate that is not the pinned one")
        connection.request("GET", "/stats", headers={"Authorization": f"Bearer {instance['token']}"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise ConnectionError(f"/stats answered {response.status}")
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        connection.close()


def served(routing_table: Path, model: str) -> int:
    """Requests the instances of ``model`` answered (the gate's TLS files lie beside the table)."""
    table = json.loads(routing_table.read_text())
    return sum(int(instance_stats(i, routing_table.parent / "gate-tls")["served"]) for i in table["models"][model])
