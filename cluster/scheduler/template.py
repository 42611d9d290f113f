"""Filling in a job template: ``{name}`` placeholders, nothing else.

The scheduler's own values (port, token, model, job name, python) and the
operator's ``vars`` are the only things that reach a job script; a request
never does.  A variable's value may itself use the built-in placeholders
(the vLLM template's ``model_path`` defaults to ``{model}``).  ``${name}``
(a shell variable) is left alone.  The config loader has already checked
that every placeholder of the template has a value.
"""

from __future__ import annotations

import re

from ..config import PLACEHOLDER, Service
from ..tls import JobIdentity

__all__ = ["render_job_script", "tls_values"]


def tls_values(tls: JobIdentity | None) -> dict[str, str]:
    """The ``{tls_*}`` placeholders: the job's key, certificate and accepted client certificates."""
    if tls is None:
        return {"tls_keyfile": "", "tls_certfile": "", "tls_ca": ""}
    return {"tls_keyfile": str(tls.key), "tls_certfile": str(tls.cert), "tls_ca": str(tls.clients)}


def _fill(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(0))

    return PLACEHOLDER.sub(one, text)


def render_job_script(
    service: Service, *, port: int, token: str, job_name: str, python: str, tls: JobIdentity | None = None
) -> str:
    builtins = {"port": str(port), "token": token, "model": service.model, "job_name": job_name, "python": python}
    builtins.update(tls_values(tls))
    values = {name: _fill(value, builtins) for name, value in service.variables}
    values.update(builtins)
    return _fill(service.template, values)
