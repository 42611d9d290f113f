"""``sluice-cluster status``: services, jobs and the routing table, for operators.

It reads what the last passes saved (the state files and the routing table)
and who holds the pass locks; it runs no Slurm command and changes nothing.
Tokens are never shown.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..config import ClusterConfig
from ..routing import TableError, read_table
from .lock import lock_holder
from .paths import lock_path, state_path
from .phases import phase_of, routable
from .plan import effective_limits
from .state import load_state

__all__ = ["status_document", "format_status"]


def _age(now: float, then: float | None) -> float | None:
    return None if not then else round(now - then, 1)


def status_document(config: ClusterConfig) -> dict[str, Any]:
    now = time.time()
    services = []
    jobs = []
    backends: dict[str, Any] = {}
    for backend in ("slurm", "local"):
        mine = config.services_of(backend)
        if not mine:
            continue
        path = state_path(config, backend)
        state = load_state(path) if path.exists() else None
        backends[backend] = {
            "last_pass_age": _age(now, state.last_pass) if state else None,
            "observe_failures": state.observe_failures if state else 0,
            "observe_error": state.observe_error if state else "",
            "lock_holder": lock_holder(lock_path(config, backend)),
        }
        for service in mine:
            limits = effective_limits(service, now)
            summary = state.summary.get(service.model, {}) if state else {}
            records = [r for r in state.jobs.values() if r.service == service.model] if state else []
            services.append(
                {
                    "model": service.model,
                    "backend": backend,
                    "priority": service.priority,
                    "min": limits.min_instances,
                    "max": limits.max_instances,
                    "target": summary.get("target"),
                    "load_average": summary.get("average"),
                    "load_now": summary.get("current"),
                    "ready": sum(1 for r in records if routable(r)),
                    "jobs": len(records),
                }
            )
        if state:
            for record in sorted(state.jobs.values(), key=lambda r: r.submitted):
                jobs.append(
                    {
                        "id": record.id,
                        "model": record.service,
                        "backend": backend,
                        "state": record.state,
                        "phase": phase_of(record).value if record.cancelled is None else "cancelling",
                        "reason": record.cancel_reason or record.reason,
                        "node": record.node,
                        "port": record.port,
                        "age": _age(now, record.submitted),
                        "time_left": None if record.time_left is None else round(record.time_left - (now - record.observed)),
                    }
                )
    try:
        table = read_table(config.gate.routing_table)
        routing: dict[str, Any] = {
            model: [{"id": i.id, "host": i.host, "port": i.port} for i in instances] for model, instances in table.items()
        }
    except (TableError, OSError) as exc:
        routing = {"error": str(exc)}
    accounts = "two" if config.split_accounts else "single"
    plain = sorted(s.model for s in config.services if s.unsafe_plain_http)
    plain += sorted(b.model for b in config.static if b.pin is None)
    return {
        "backends": backends, "services": services, "jobs": jobs, "routing_table": routing,
        "accounts": accounts, "unsafe_plain_http": plain,
    }  # fmt: skip


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def format_status(document: dict[str, Any]) -> str:
    parts = []
    if document.get("accounts") == "single":
        parts.append(
            "WARNING single-account mode: jobs run as the gate's account and can read its keys "
            "(docs/operator-slurm.md, Two accounts)"
        )
    if document.get("unsafe_plain_http"):
        parts.append(f"WARNING plain HTTP (every path open on the cluster network): {', '.join(document['unsafe_plain_http'])}")
    for name, info in document["backends"].items():
        holder = info["lock_holder"]
        line = f"{name}: last pass {info['last_pass_age']}s ago" if info["last_pass_age"] is not None else f"{name}: no pass yet"
        if info["observe_failures"]:
            line += f"; cluster not readable for {info['observe_failures']} passes ({info['observe_error']})"
        if holder:
            line += f"; pass running (pid {holder.get('pid')} on {holder.get('host')})"
        parts.append(line)
    parts.append("")
    parts.append("SERVICES")
    parts.append(
        _table(
            ["model", "backend", "ready", "jobs", "target", "min", "max", "load_avg", "load_now", "priority"],
            [
                [s["model"], s["backend"], s["ready"], s["jobs"], s["target"], s["min"], s["max"], s["load_average"],
                 s["load_now"], s["priority"]]
                for s in document["services"]
            ],
        )
    )  # fmt: skip
    parts.append("")
    parts.append("JOBS")
    parts.append(
        _table(
            ["id", "model", "state", "phase", "reason", "node", "port", "age_s", "time_left_s"],
            [
                [j["id"], j["model"], j["state"], j["phase"], j["reason"] or None, j["node"] or None, j["port"], j["age"],
                 j["time_left"]]
                for j in document["jobs"]
            ],
        )
    )  # fmt: skip
    parts.append("")
    parts.append("ROUTING TABLE")
    routing = document["routing_table"]
    if "error" in routing and isinstance(routing["error"], str):
        parts.append(f"unreadable: {routing['error']}")
    else:
        rows = [[model, i["id"], i["host"], i["port"]] for model, items in sorted(routing.items()) for i in items]
        parts.append(_table(["model", "instance", "host", "port"], rows))
    return "\n".join(parts)


def status_json(config: ClusterConfig) -> str:
    return json.dumps(status_document(config), indent=2, sort_keys=True)
