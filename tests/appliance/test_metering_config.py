"""[quotas], [accounting], [metrics] and [logging] in the appliance's configuration."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from appliance.quotas import MemoryBackend, Meter, build_meter
from appliance.quotas.config import (
    MeteringSettings,
    parse_metering,
)
from appliance.settings import parse_settings
from policy.config import ConfigError

CLUSTER = '[[clusters]]\nname = "local"\ntransport = "local"\ngate_command = ["gate", "--local-pipe"]\n'


def settings(text: str, base: Path) -> MeteringSettings:
    return parse_settings(tomllib.loads(CLUSTER + text), base).metering


def test_defaults(tmp_path: Path) -> None:
    metering = settings("", tmp_path)
    assert metering.quotas.enabled and metering.quotas.storage == "memory://" and metering.quotas.policy is None
    assert not metering.quotas.fail_open
    assert metering.accounting.backend is None
    assert metering.metrics.token_file is None and metering.metrics.admin_bind is None
    assert metering.logging.level == "info" and metering.logging.requests


def test_everything_set(tmp_path: Path) -> None:
    (tmp_path / "quotas.toml").write_text("[user]\nrequests_per_minute = 3\n")
    (tmp_path / "redis.password").write_text("pw")
    (tmp_path / "metrics.token").write_text("t" * 32)
    metering = settings(
        """
        [quotas]
        policy = "quotas.toml"
        storage = "async+redis://127.0.0.1:6379/0"
        storage_password_file = "redis.password"
        on_storage_error = "unsafe-allow"
        storage_timeout = 1
        lease_ttl = 10
        [accounting]
        backend = "sqlite"
        path = "usage.db"
        synchronous = "full"
        [metrics]
        token_file = "metrics.token"
        admin_bind = "127.0.0.1:9100"
        [logging]
        level = "debug"
        requests = false
        """,
        tmp_path,
    )
    assert metering.quotas.policy == tmp_path / "quotas.toml"
    assert metering.quotas.fail_open and metering.quotas.storage_timeout == 1.0 and metering.quotas.lease_ttl == 10.0
    assert metering.accounting.path == tmp_path / "usage.db" and metering.accounting.synchronous == "full"
    assert metering.metrics.admin_bind == ("127.0.0.1", 9100)
    assert metering.logging.level == "debug" and not metering.logging.requests


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[quotas]\nstorage = "redis://x"', "quotas.storage must be"),
        ('[quotas]\nstorage = "async+redis://:pw@host:6379"', "must not hold a password"),
        ('[quotas]\non_storage_error = "allow"', "quotas.on_storage_error must be one of: deny, unsafe-allow"),
        ('[quotas]\npolicy = "missing.toml"', "quotas.policy: .*missing.toml does not exist"),
        ("[quotas]\nstorage_timeout = 0", "quotas.storage_timeout must be between"),
        ("[quotas]\nbogus = 1", "quotas.bogus is not a known setting"),
        ("[accounting]\n", "accounting.path is required"),
        ('[accounting]\npath = "no/such/dir/usage.db"', "accounting.path: the directory"),
        ('[accounting]\nbackend = "postgresql"', "accounting.dsn_file is required"),
        ('[accounting]\nbackend = "mysql"', "accounting.backend must be one of"),
        ('[accounting]\npath = "u.db"\nsynchronous = "off"', "accounting.synchronous must be one of"),
        ('[metrics]\nadmin_bind = "9100"', "metrics.admin_bind must be"),
        ('[metrics]\ntoken_file = "nope"', "metrics.token_file: .* does not exist"),
        ('[logging]\nlevel = "loud"', "logging.level must be one of"),
        ("[logging]\nrequests = 1", "logging.requests must be a bool"),
    ],
)
def test_reject_bad_settings(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(text, tmp_path)


def test_reject_bad_policy_at_start(tmp_path: Path) -> None:
    (tmp_path / "quotas.toml").write_text("[user]\nrequests_per_hour = 3\n")
    with pytest.raises(ConfigError, match="quotas.policy: .*requests_per_hour is not a known limit"):
        settings('[quotas]\npolicy = "quotas.toml"', tmp_path)


def test_parse_metering_alone() -> None:
    with pytest.raises(ConfigError, match="quotas must be a table"):
        parse_metering({"quotas": 3}, Path("."))


def test_build_meter(tmp_path: Path) -> None:
    (tmp_path / "usage.db").touch()
    meter = build_meter(settings('[accounting]\npath = "usage.db"', tmp_path))
    assert isinstance(meter, Meter) and meter.quotas is not None and isinstance(meter.quotas.backend, MemoryBackend)
    assert meter.accounting is not None

    async def scenario() -> None:
        async with meter:
            pass

    asyncio.run(scenario())
    off = build_meter(settings("[quotas]\nenabled = false", tmp_path))
    assert off.quotas is None and off.accounting is None


def test_reject_names_the_file_the_key_and_the_fix(tmp_path: Path) -> None:
    from appliance.settings import load_settings

    (tmp_path / "sluice.toml").write_text(CLUSTER + "[logging]\nlevel = 'loud'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "sluice.toml")
    assert str(info.value) == f"{tmp_path / 'sluice.toml'}: logging.level must be one of: debug, info, warning, error"
    assert info.value.key == "logging.level"
