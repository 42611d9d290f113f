"""The cluster configuration: one TOML file owned by the operator.

It names the routing table and the state directory the scheduler keeps, the
static backends (model servers the operator runs by other means), and the
services the scheduler keeps running: per model, the job template, its
resources and time limit, the instance bounds, the autoscaling thresholds,
the warm-up bound, an optional time-of-day schedule and a priority.  It is
read once at start and validated there; every error names the key and the
fix.  Request data never reaches this module.

See ``docs/operator-slurm.md`` for a complete, commented example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from policy.config import ConfigError, Table, build, config_keys, default, setting
from policy.grammar import ROUTE_IDS, Call

__all__ = [
    "ConfigError",
    "StaticBackend",
    "SchedulePeriod",
    "SlurmResources",
    "Service",
    "GateSettings",
    "SchedulerSettings",
    "SlurmSettings",
    "ClusterConfig",
    "load_config",
    "TEMPLATES_DIR",
    "BUILTIN_PLACEHOLDERS",
]

# Generous upper bound on one request's backend time: a long generation on a
# large model can take minutes; anything beyond this is a stuck backend.
MAX_REQUEST_TIMEOUT: Final = 3600.0

# Instances of one model: far above what one cluster gives one model, low
# enough that a typo (4000 for 40) cannot flood the queue.
MAX_INSTANCES: Final = 64

# A time-limit, warm-up or pending bound longer than this is a typo.
MAX_DURATION: Final = 30 * 86400.0

# Where the built-in job templates live (``template = "vllm"``).
TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"

# Placeholders the scheduler itself fills in a job template; operator
# variables (``vars``) may not shadow them.
BUILTIN_PLACEHOLDERS: Final = frozenset({"port", "token", "model", "job_name", "python", "tls_keyfile", "tls_certfile", "tls_ca"})

# The job's TLS files (see cluster/tls.py): a template or local command must
# pass all three to its server, unless the service says unsafe_plain_http.
TLS_PLACEHOLDERS: Final = ("tls_keyfile", "tls_certfile", "tls_ca")

# ``{name}`` not preceded by ``$`` (so a shell's ``${name}`` stays as it is).
PLACEHOLDER: Final = re.compile(r"(?<!\$)\{([a-z_][a-z0-9_]{0,31})\}")

# A template line ``# default: name = value`` gives a variable's default.
_TEMPLATE_DEFAULT: Final = re.compile(r"^# default: ([a-z_][a-z0-9_]{0,31}) =[ \t]*(.*)$", re.MULTILINE)

# Option values passed to sbatch as one argv element each (never a shell):
# printable ASCII without spaces, so one value cannot look like two options.
_SLURM_VALUE: Final = re.compile(r"[!-~]{1,256}")
_JOB_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_TIME_LIMIT: Final = re.compile(r"(?:\d{1,2}-\d{1,2}(?::\d{1,2}){0,2}|\d{1,6}(?::\d{1,2}){0,2})")
_CLOCK: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NODE_HOST: Final = re.compile(r"[A-Za-z0-9.{}-]{1,253}")
_VAR_VALUE: Final = re.compile(r"[^\x00-\x1f\x7f]{0,4096}")
_COMMAND_NAME: Final = re.compile(r"[A-Za-z0-9_./-]{1,4096}")


@dataclass(frozen=True, slots=True)
class StaticBackend:
    """A model server that the operator runs: ``model`` is served at ``host:port``."""

    model: str
    host: str
    port: int
    routes: tuple[str, ...]
    token: str | None = field(default=None, repr=False)
    pin: str | None = None  # https: SHA-256 of the server's certificate (its server_cert file)
    revision: str | None = None  # the operator's name for the weights (a revision or hash)


@dataclass(frozen=True, slots=True)
class SchedulePeriod:
    """Instance bounds that apply on ``days`` (0 = Monday) from ``start`` to ``end``.

    Times are minutes after local midnight; ``end <= start`` wraps past midnight
    (a period that starts on a listed day continues into the next morning).
    """

    days: frozenset[int]
    start: int
    end: int
    min_instances: int
    max_instances: int


@dataclass(frozen=True, slots=True)
class SlurmResources:
    """sbatch options of one service, each passed as one ``--name=value`` argument."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = setting(None, low=1, high=4096)
    mem: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    nice: int | None = None

    def sbatch_options(self) -> list[str]:
        options = []
        for name in ("partition", "account", "qos", "reservation", "gres", "cpus_per_task", "mem", "constraint", "nice"):
            value = getattr(self, name)
            if value is not None:
                options.append(f"--{name.replace('_', '-')}={value}")
        if self.exclusive:
            options.append("--exclusive")
        return options


@dataclass(frozen=True, slots=True)
class Service:
    """A model the scheduler keeps running (see :mod:`cluster.scheduler`)."""

    model: str
    routes: tuple[str, ...]
    backend: str  # "local" or "slurm"
    command: tuple[str, ...]  # local: argv of the server; {port} is replaced
    min_instances: int
    max_instances: int
    warmup_timeout: float = setting(900.0, low=1, high=MAX_DURATION)
    # slurm: the job script with its placeholders, and where it came from
    template: str = ""
    template_name: str = ""
    variables: tuple[tuple[str, str], ...] = ()
    resources: SlurmResources = SlurmResources()
    time_limit: int | None = None  # seconds; None: the partition's default
    # autoscaling
    requests_per_instance: float = setting(16.0, low=0.1, high=100000)
    scale_up_threshold: float = setting(0.75, low=0.01, high=10)
    scale_down_threshold: float = setting(0.25, low=0, high=10)
    load_window: float = setting(120.0, low=1, high=86400)
    scale_down_delay: float = setting(600.0, low=0, high=86400)
    pending_timeout: float = setting(1800.0, low=1, high=MAX_DURATION)
    renew_before: float = 0.0  # 0: never renew before the time limit; the loader's default depends on time_limit
    drain_timeout: float = 300.0  # the loader's default: the gate's request_timeout
    backoff_base: float = setting(30.0, low=0, high=86400)
    backoff_max: float = 900.0  # the loader's default: at least backoff_base
    # requests for a model with no ready instance
    hold_queue: int = setting(32, low=0, high=4096)
    hold_timeout: float = 300.0  # the loader's default: at most the gate's request_timeout
    schedule: tuple[SchedulePeriod, ...] = ()
    priority: int = setting(0, low=-1000, high=1000)
    # **Unsafe**: the job serves plain HTTP, so every path but vLLM's /v1 is
    # open to anyone on the cluster network.  Logged on every submission.
    unsafe_plain_http: bool = False
    revision: str | None = None  # the operator's name for the weights (a revision or hash)

    @property
    def job_key(self) -> str:
        """The model name reduced to characters safe in a job name and a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)


@dataclass(frozen=True, slots=True)
class GateSettings:
    routing_table: Path
    request_timeout: float = setting(300.0, low=0, high=MAX_REQUEST_TIMEOUT)  # and above 0
    connect_timeout: float = setting(5.0, low=0, high=60)  # and above 0
    state_dir: Path | None = None  # None: "state" next to the routing table
    # The gate's TLS client key and certificate (``sluice-cluster tls init``).
    tls_dir: Path | None = None  # the loader's default: "gate-tls" next to the configuration file
    # Two accounts (see docs/operator-slurm.md, "Two accounts"): the directory
    # the gate and the scheduler's account share (load files, kicks, the
    # routing table).  None: one account runs both (weaker, logged).
    spool_dir: Path | None = None

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.routing_table.parent / "state"

    @property
    def shared(self) -> Path:
        """Where the gate leaves what the scheduler reads: its load files and kicks."""
        return self.spool_dir if self.spool_dir is not None else self.state

    @property
    def tls(self) -> Path:
        return self.tls_dir if self.tls_dir is not None else self.routing_table.parent / "gate-tls"


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    # Seconds between passes of a scheduler loop, and the least time between
    # two passes kicked by the appliance's pings (it pings every 5 s).
    pass_interval: float = setting(5.0, low=0.1, high=3600)
    # A pass that takes longer than this is stopped (and its process ended).
    pass_timeout: float = setting(120.0, low=5, high=3600)
    probe_timeout: float = setting(2.0, low=0.1, high=60)
    port_min: int = 20000
    port_max: int = 32000
    job_prefix: str = "sluice"
    max_submit_per_pass: int = setting(8, low=1, high=MAX_INSTANCES)


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    sbatch: str = "sbatch"
    squeue: str = "squeue"
    scancel: str = "scancel"
    command_timeout: float = setting(30.0, low=1, high=600)
    slurm_conf: Path | None = None
    node_host: str = "{node}"
    log_dir: Path | None = None  # None: "logs" in the state directory
    job_dir: Path | None = None  # None: "jobs" in the state directory (the jobs' TLS files)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    gate: GateSettings
    static: tuple[StaticBackend, ...]
    services: tuple[Service, ...]
    scheduler: SchedulerSettings = SchedulerSettings()
    slurm: SlurmSettings = SlurmSettings()
    path: Path | None = None  # the file it was read from

    def model_routes(self) -> dict[str, tuple[str, ...]]:
        """Every configured model and the route ids it serves."""
        routes: dict[str, tuple[str, ...]] = {}
        for backend in self.static:
            routes[backend.model] = backend.routes
        for service in self.services:
            routes[service.model] = service.routes
        return routes

    def model_revisions(self) -> dict[str, str]:
        """The configured revision of each model that has one."""
        revisions = {b.model: b.revision for b in self.static if b.revision is not None}
        revisions.update((s.model, s.revision) for s in self.services if s.revision is not None)
        return revisions

    def services_of(self, backend: str) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.backend == backend)

    @property
    def log_dir(self) -> Path:
        return self.slurm.log_dir if self.slurm.log_dir is not None else self.gate.state / "logs"

    @property
    def job_dir(self) -> Path:
        """Each job's private directory (its TLS key) lives here; the nodes must read it."""
        return self.slurm.job_dir if self.slurm.job_dir is not None else self.gate.state / "jobs"

    @property
    def split_accounts(self) -> bool:
        """Whether the gate and the jobs run as two accounts (``gate.spool_dir`` set)."""
        return self.gate.spool_dir is not None


# A revision as operators write them: a git hash, a Hugging Face revision, "v2@sha256:..."
_REVISION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,127}", re.ASCII)


def _revision(table: Table, where: str) -> str | None:
    value: str | None = table.get("revision", str, None)
    if value is not None and _REVISION_RE.fullmatch(value) is None:
        raise ConfigError(f"{where}.revision must be 1 to 128 of letters, digits and ._:/@+- (a revision or hash)")
    return value


def _model(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{where}.model must be a string")
    try:
        Call("chat", name, 0)  # the grammar's model-name rule, applied once at start
    except Exception:
        raise ConfigError(f"{where}.model {name!r} is not a valid model-name (see policy/request.abnf)") from None
    return name


def _routes(table: Table, where: str) -> tuple[str, ...]:
    routes = table.get("routes", list)
    if not routes or any(r not in ROUTE_IDS for r in routes):
        raise ConfigError(f"{where}.routes must be a non-empty list of {', '.join(ROUTE_IDS)}")
    return tuple(routes)


def _server_pin(table: Table, where: str, base: Path, https: bool) -> str | None:
    """The pin of a static backend's certificate (``server_cert``, PEM): https only."""
    cert_file = table.get("server_cert", str, None)
    if not https:
        if cert_file is not None:
            raise ConfigError(f"{where}.server_cert needs an https:// url")
        return None
    if cert_file is None:
        raise ConfigError(f"{where}: an https:// backend needs server_cert (its certificate, PEM: the gate pins it)")
    try:
        pem = (base / cert_file).read_text(encoding="ascii")
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}.server_cert: cannot read a PEM certificate ({exc})") from None
    return hashlib.sha256(der).hexdigest()


def _static(data: Any, where: str, base: Path) -> StaticBackend:
    table = Table(data, where, {"model", "url", "routes", "token_file", "server_cert", "revision"})
    url = urlsplit(table.get("url", str))
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query or url.username:
        raise ConfigError(f"{where}.url must be https://HOST:PORT or http://HOST:PORT (no path, query or credentials)")
    https = url.scheme == "https"
    pin = _server_pin(table, where, base, https)
    token = None
    token_file = table.get("token_file", str, None)
    if token_file is not None:
        token = (base / token_file).read_text(encoding="ascii").strip()
        if not token or not token.isprintable() or " " in token:
            raise ConfigError(f"{where}.token_file must hold one printable token")
    port = url.port or (443 if https else 80)
    return StaticBackend(
        _model(table.data.get("model"), where), url.hostname, port, _routes(table, where), token, pin, _revision(table, where)
    )


def _time_limit(value: Any, where: str) -> int | None:
    """``time_limit``: minutes (an integer), or Slurm's forms: ``M``, ``M:S``, ``H:M:S``,
    ``D-H``, ``D-H:M``, ``D-H:M:S``.  Slurm enforces whole minutes, so must this."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value * 60
    elif isinstance(value, str) and _TIME_LIMIT.fullmatch(value):
        days, _, clock = value.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:
            parts += [0] * (3 - len(parts))  # D-H, D-H:M, D-H:M:S
            hours, minutes, secs = parts
        elif len(parts) == 3:
            hours, minutes, secs = parts
        else:
            hours, (minutes, secs) = 0, (parts + [0])[:2]  # M or M:S
        if (len(parts) == 3 and minutes > 59) or secs > 59:
            raise ConfigError(f"{where}.time_limit {value!r}: minutes and seconds must be below 60")
        seconds = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ConfigError(f"{where}.time_limit must be minutes (an integer) or Slurm's [D-]H:M:S")
    if seconds % 60:
        raise ConfigError(f"{where}.time_limit: Slurm enforces whole minutes; round it")
    if not 60 <= seconds <= MAX_DURATION:
        raise ConfigError(f"{where}.time_limit must be between 1 minute and 30 days")
    return seconds


_RESOURCE_STRINGS: Final = ("partition", "account", "qos", "reservation", "gres", "mem", "constraint")


def _resources(table: Table) -> SlurmResources:
    nice = table.get("nice", int, None)
    if nice is not None and not 0 <= nice <= 10000:
        # negative nice needs a Slurm operator; ask for a QOS instead
        raise table.error("nice", "must be between 0 and 10000 (raise priority with a qos)")
    resources: SlurmResources = build(SlurmResources, table, nice=nice)
    for key in _RESOURCE_STRINGS:
        value = getattr(resources, key)
        if value is not None and not _SLURM_VALUE.fullmatch(value):
            raise table.error(key, "must be printable ASCII without spaces")
    return resources


def _schedule(items: list[Any], where: str, low: int, high: int) -> tuple[SchedulePeriod, ...]:
    periods = []
    for index, raw in enumerate(items):
        at = f"{where}.schedule[{index}]"
        item = Table(raw, at, {"days", "start", "end", "min_instances", "max_instances"})
        days = item.get("days", list, list(_DAYS))
        if not days or any(d not in _DAYS for d in days):
            raise ConfigError(f"{at}.days must be a non-empty list of {', '.join(_DAYS)}")
        clock = []
        for key in ("start", "end"):
            match = _CLOCK.fullmatch(item.get(key, str))
            if match is None:
                raise ConfigError(f"{at}.{key} must be HH:MM (24-hour clock)")
            clock.append(int(match.group(1)) * 60 + int(match.group(2)))
        period_min = item.get("min_instances", int, low)
        period_max = item.get("max_instances", int, max(high, period_min))
        if not 0 <= period_min <= period_max <= MAX_INSTANCES:
            raise ConfigError(f"{at}: need 0 <= min_instances <= max_instances <= {MAX_INSTANCES}")
        periods.append(SchedulePeriod(frozenset(_DAYS.index(d) for d in days), clock[0], clock[1], period_min, period_max))
    return tuple(periods)


def template_placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def _template(table: Table, where: str, base: Path, plain: bool) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    name = table.get("template", str, None)
    path_value = table.get("template_file", str, None)
    if name is not None and path_value is not None:
        raise ConfigError(f"{where}: give template (a built-in) or template_file, not both")
    if path_value is not None:
        path = base / path_value
        label = str(path)
    else:
        name = name or "vllm"
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name) or not (TEMPLATES_DIR / f"{name}.sbatch").is_file():
            known = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.sbatch")))
            raise ConfigError(f"{where}.template {name!r} is not a built-in template ({known}); use template_file")
        path = TEMPLATES_DIR / f"{name}.sbatch"
        label = name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read job template {path}: {exc}") from None
    if not text.startswith("#!"):
        raise ConfigError(f"{where}: job template {label} must start with #! (sbatch needs an interpreter line)")
    defaults = dict(_TEMPLATE_DEFAULT.findall(text))
    variables = table.get("vars", dict, {})
    for key, value in variables.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,31}", key) or key in BUILTIN_PLACEHOLDERS:
            raise ConfigError(f"{where}.vars.{key}: names are lowercase identifiers other than {sorted(BUILTIN_PLACEHOLDERS)}")
        if not isinstance(value, str) or not _VAR_VALUE.fullmatch(value):
            raise ConfigError(f"{where}.vars.{key} must be one line of text")
    merged = {**{k: v.strip() for k, v in defaults.items()}, **variables}
    used = template_placeholders(text)
    for required in ("port", "token", *(() if plain else TLS_PLACEHOLDERS)):
        if required not in used:
            hint = "" if required in ("port", "token") else " (the job's TLS files), or set unsafe_plain_http = true"
            raise ConfigError(f"{where}: job template {label} must use {{{required}}}{hint}")
    missing = sorted(used - BUILTIN_PLACEHOLDERS - set(merged))
    if missing:
        raise ConfigError(f"{where}: job template {label} uses {{{missing[0]}}}: set it in {where}.vars")
    return text, label, tuple(sorted(merged.items()))


_POLICY_KEYS: Final = {
    "min_instances", "max_instances", "warmup_timeout", "requests_per_instance", "scale_up_threshold",
    "scale_down_threshold", "load_window", "scale_down_delay", "pending_timeout", "renew_before", "drain_timeout",
    "backoff_base", "backoff_max", "hold_queue", "hold_timeout", "schedule", "priority",
}  # fmt: skip
_SLURM_KEYS: Final = {"template", "template_file", "vars", "resources", "time_limit"}


def _service(name: str, data: Any, where: str, base: Path, request_timeout: float) -> Service:
    Table(data, where, {"routes", "backend", "revision", "unsafe_plain_http", "command"} | _SLURM_KEYS | _POLICY_KEYS)
    backend = data.get("backend")
    if backend not in ("local", "slurm"):
        raise ConfigError(f"{where}.backend must be 'local' or 'slurm'", key=f"{where}.backend")
    own = {"command"} if backend == "local" else _SLURM_KEYS
    table = Table(data, where, {"routes", "backend", "revision", "unsafe_plain_http"} | own | _POLICY_KEYS)
    plain = table.get("unsafe_plain_http", bool, False)
    model = _model(name, where)
    command: tuple[str, ...] = ()
    template, template_name = "", ""
    variables: tuple[tuple[str, str], ...] = ()
    resources, time_limit = SlurmResources(), None
    if backend == "local":
        argv = table.get("command", list)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise table.error("command", "must be a non-empty list of strings")
        command = tuple(argv)
        used = set().union(*(template_placeholders(a) for a in argv))
        missing = [name for name in TLS_PLACEHOLDERS if name not in used]
        if missing and not plain:
            raise table.error(
                "command", f"must pass {{{missing[0]}}} (the job's TLS files) to the server, or set unsafe_plain_http = true"
            )
    else:
        template, template_name, variables = _template(table, where, base, plain)
        resources = _resources(table.table("resources", config_keys(SlurmResources), {}))
        time_limit = _time_limit(table.data.get("time_limit"), where)
    low = table.get("min_instances", int, 1)
    high = table.get("max_instances", int, max(low, 1))
    if not 0 <= low <= high <= MAX_INSTANCES:
        raise ConfigError(f"{where}: need 0 <= min_instances <= max_instances <= {MAX_INSTANCES}", key=where)
    backoff_base = table.number("backoff_base", float, 0, 86400, default(Service, "backoff_base"))
    service = build(
        Service, table, base,
        model=model, routes=_routes(table, where), backend=backend, command=command,
        min_instances=low, max_instances=high,
        template=template, template_name=template_name, variables=variables, resources=resources, time_limit=time_limit,
        drain_timeout=table.number("drain_timeout", float, 0, MAX_REQUEST_TIMEOUT, request_timeout),
        backoff_base=backoff_base,
        backoff_max=table.number("backoff_max", float, backoff_base, 86400, max(default(Service, "backoff_max"), backoff_base)),
        hold_timeout=table.number(
            "hold_timeout", float, 0, MAX_REQUEST_TIMEOUT, min(default(Service, "hold_timeout"), request_timeout)
        ),
        schedule=_schedule(table.get("schedule", list, []), where, low, high),
        renew_before=0.0,
        revision=_revision(table, where),
    )  # fmt: skip
    if service.scale_down_threshold >= service.scale_up_threshold:
        raise table.error("scale_down_threshold", "must be below scale_up_threshold")
    default_renew = 0.0 if time_limit is None else min(service.warmup_timeout + 60.0, time_limit / 2)
    renew = table.number("renew_before", float, 0, MAX_DURATION, default_renew)
    if renew and time_limit is None:
        raise table.error("renew_before", "needs a time_limit (the partition's default is not known here)")
    if time_limit is not None and renew >= time_limit:
        raise table.error("renew_before", "must be shorter than time_limit")
    return dataclasses.replace(service, renew_before=renew)


def _scheduler(table: Table) -> SchedulerSettings:
    settings: SchedulerSettings = build(SchedulerSettings, table)
    if not 1024 <= settings.port_min < settings.port_max <= 65535 or settings.port_max - settings.port_min < 100:
        raise table.error("port_min", "and port_max: need 1024 <= port_min < port_max <= 65535, at least 100 ports apart")
    if not _JOB_PREFIX.fullmatch(settings.job_prefix):
        raise table.error("job_prefix", "must be a letter then up to 31 letters, digits, _ or -")
    return settings


def _slurm(table: Table, base: Path) -> SlurmSettings:
    settings: SlurmSettings = build(SlurmSettings, table, base)
    sbatch, squeue, scancel = (_command(table, base, key, getattr(settings, key)) for key in ("sbatch", "squeue", "scancel"))
    node_host = settings.node_host
    if not _NODE_HOST.fullmatch(node_host) or set(PLACEHOLDER.findall(node_host)) - {"node"}:
        raise table.error("node_host", "must be a host name, optionally with {node} (e.g. '{node}.ib.cluster')")
    return dataclasses.replace(settings, sbatch=sbatch, squeue=squeue, scancel=scancel)


def _command(table: Table, base: Path, key: str, value: str) -> str:
    """A Slurm command's name, or its path (relative to the config file's folder)."""
    if not _COMMAND_NAME.fullmatch(value):
        raise table.error(key, "must be a command name or an absolute path")
    return str(base / value) if "/" in value else value


def _gate(table: Table, base: Path) -> GateSettings:
    gate: GateSettings = build(GateSettings, table, base)
    if not gate.request_timeout or not gate.connect_timeout:
        raise table.error("request_timeout", "must be in (0, 3600] and gate.connect_timeout in (0, 60]")
    if gate.tls_dir is None:  # beside sealed-keys/: the gate's, not in the spool
        gate = dataclasses.replace(gate, tls_dir=base / "gate-tls")
    spool_dir = gate.spool_dir
    if spool_dir is not None:
        if gate.routing_table.parent != spool_dir:
            raise table.error("routing_table", "must be in gate.spool_dir (the scheduler's account writes it there)")
        if gate.state == spool_dir or gate.state.is_relative_to(spool_dir):
            raise table.error("state_dir", "must not be in gate.spool_dir: it is private to the scheduler's account")
    return gate


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster configuration at ``path``; a mistake raises ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read cluster config: {exc}; give a readable TOML file", file=path) from None
    try:
        return _parse(data, path)
    except ConfigError as exc:
        raise exc.in_file(path) from None


def _parse(data: dict[str, Any], path: Path) -> ClusterConfig:
    top = Table(data, "", {"gate", "backends", "services", "scheduler", "slurm"})
    base = path.parent
    gate = _gate(top.table("gate", config_keys(GateSettings)), base)
    static = tuple(_static(entry, f"backends[{i}]", base) for i, entry in enumerate(top.get("backends", list, [])))
    services = tuple(
        _service(name, table, f"services.{name}", base, gate.request_timeout)
        for name, table in top.get("services", dict, {}).items()
    )
    models = [b.model for b in static] + [s.model for s in services]
    if len(models) != len(set(models)):
        raise ConfigError("a model is configured twice (backends and services must name distinct models)")
    keys = [s.job_key for s in services]
    if len(keys) != len(set(keys)):
        raise ConfigError("two services differ only in characters other than letters, digits, '.', '_' and '-'")
    scheduler = _scheduler(top.table("scheduler", config_keys(SchedulerSettings), {}))
    slurm = _slurm(top.table("slurm", config_keys(SlurmSettings), {}), base)
    return ClusterConfig(gate, static, services, scheduler, slurm, path.resolve())
