"""layergc.config: precedence, parsing, registry configs, and the errors users see."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from layergc.config import (
    DEFAULT_DB_URL,
    OPTIONS,
    Settings,
    env_var,
    format_duration,
    load_settings,
    make_driver,
    parse_addr,
    parse_bool,
    parse_duration,
)
from layergc.errors import ConfigError


def write(path: Path, content: str) -> str:
    path.write_text(textwrap.dedent(content))
    return str(path)


@pytest.fixture
def root(tmp_path: Path) -> str:
    (tmp_path / "root").mkdir()
    return str(tmp_path / "root")


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("168h", timedelta(hours=168)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5s", timedelta(seconds=1.5)),
        ("250ms", timedelta(milliseconds=250)),
    ],
)
def test_go_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "1d", "abc", "5 s", "-5s", "h"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="grace"):
        parse_duration(text, "grace")


def test_format_duration_round_trips() -> None:
    for text in ("168h", "1m30s", "0s", "5s"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(("text", "value"), [("true", True), ("FALSE", False), ("1", True)])
def test_bools(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_bad_bool() -> None:
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_bool("maybe", "LAYERGC_DRY_RUN")


def test_addresses() -> None:
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_addr(":9464") == ("0.0.0.0", 9464)
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("9464", "host:", "host:99999", "host:x"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


# --- defaults and precedence ------------------------------------------------------------


def test_defaults(root: str) -> None:
    s = load_settings({"root": root}, env={})
    assert s.storage == {"driver": "filesystem", "rootdirectory": root}
    assert s.db == DEFAULT_DB_URL
    assert (s.grace, s.upload_timeout) == (timedelta(hours=24), timedelta(hours=168))
    assert s.settle == timedelta(seconds=5)
    assert s.after_delete_timeout == timedelta(seconds=120)
    assert (s.purge_interval, s.misfire_grace) == (timedelta(hours=1), timedelta(hours=1))
    assert s.lease_ttl == timedelta(seconds=60)
    assert s.dry_run is False and s.delete_untagged is False and s.json is False
    assert s.schedule is None and s.interval is None and s.metrics_addr is None
    assert s.log_format == "text" and s.blob_cache is None
    assert s.replica_id  # generated, unique per process


def test_every_option_is_a_settings_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(OPTIONS) <= fields


def test_precedence_cli_env_file_default(tmp_path: Path, root: str) -> None:
    config = write(
        tmp_path / "layergc.toml",
        """
        grace = "1h"
        upload_timeout = "2h"
        settle = "7s"
        dry_run = true
        """,
    )
    env = {"LAYERGC_GRACE": "2h", "LAYERGC_UPLOAD_TIMEOUT": "3h", "LAYERGC_DRY_RUN": "false"}
    s = load_settings({"root": root, "grace": "3h"}, config_file=config, env=env)
    assert s.grace == timedelta(hours=3)  # command line
    assert s.upload_timeout == timedelta(hours=3)  # environment over file
    assert s.dry_run is False  # environment over file
    assert s.settle == timedelta(seconds=7)  # file over default
    assert s.misfire_grace == timedelta(hours=1)  # default
    assert s.config_file == config


def test_none_on_the_command_line_means_not_given(root: str) -> None:
    s = load_settings({"root": root, "dry_run": None, "grace": None}, env={"LAYERGC_GRACE": "5m"})
    assert s.grace == timedelta(minutes=5) and s.dry_run is False


def test_typed_cli_values_are_accepted(root: str) -> None:
    s = load_settings({"root": root, "dry_run": True, "grace": timedelta(minutes=1)}, env={})
    assert s.dry_run is True and s.grace == timedelta(minutes=1)


def test_config_file_from_environment(tmp_path: Path, root: str) -> None:
    config = write(tmp_path / "c.toml", f'root = "{root}"\ninterval = "6h"\n')
    s = load_settings({}, env={"LAYERGC_CONFIG": config})
    assert s.interval == timedelta(hours=6) and s.storage["rootdirectory"] == root


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "etc" / "data").mkdir(parents=True)
    config = write(tmp_path / "etc" / "layergc.toml", 'root = "data"\n')
    s = load_settings({}, config_file=config, env={})
    assert s.storage["rootdirectory"] == str(tmp_path / "etc" / "data")


def test_every_option_has_an_environment_variable(root: str) -> None:
    env = {
        "LAYERGC_DB": "postgresql://u@127.0.0.1/x",
        "LAYERGC_DELETE_UNTAGGED": "yes",
        "LAYERGC_JSON": "1",
        "LAYERGC_AFTER_DELETE_COMMAND": "systemctl restart docker-registry",
        "LAYERGC_AFTER_DELETE_TIMEOUT": "30s",
        "LAYERGC_SCHEDULE": "0 3 * * *",
        "LAYERGC_PURGE_INTERVAL": "15m",
        "LAYERGC_MISFIRE_GRACE": "2h",
        "LAYERGC_METRICS_ADDR": "127.0.0.1:9464",
        "LAYERGC_LOG_FORMAT": "json",
        "LAYERGC_LOG_LEVEL": "debug",
        "LAYERGC_LEASE_TTL": "30s",
        "LAYERGC_REPLICA_ID": "pod-1",
        "LAYERGC_ROOT": root,
    }
    s = load_settings({}, env=env)
    assert s.db == "postgresql://u@127.0.0.1/x"
    assert s.delete_untagged and s.json
    assert s.after_delete_command == "systemctl restart docker-registry"
    assert s.after_delete_timeout == timedelta(seconds=30)
    assert s.schedule == "0 3 * * *" and s.interval is None
    assert s.purge_interval == timedelta(minutes=15)
    assert s.misfire_grace == timedelta(hours=2)
    assert s.metrics_addr == "127.0.0.1:9464"
    assert (s.log_format, s.log_level) == ("json", "debug")
    assert s.lease_ttl == timedelta(seconds=30) and s.replica_id == "pod-1"
    assert env_var("upload_timeout") == "LAYERGC_UPLOAD_TIMEOUT"


# --- errors -------------------------------------------------------------------------


def test_bad_duration_in_environment_names_the_variable(root: str) -> None:
    with pytest.raises(ConfigError, match="LAYERGC_GRACE"):
        load_settings({"root": root}, env={"LAYERGC_GRACE": "1 day"})


def test_bad_bool_in_environment(root: str) -> None:
    with pytest.raises(ConfigError, match="LAYERGC_DRY_RUN"):
        load_settings({"root": root}, env={"LAYERGC_DRY_RUN": "sure"})


def test_bad_value_in_a_lower_layer_is_ignored_when_overridden(root: str) -> None:
    s = load_settings({"root": root, "grace": "1h"}, env={"LAYERGC_GRACE": "nonsense"})
    assert s.grace == timedelta(hours=1)


def test_unknown_toml_key(tmp_path: Path, root: str) -> None:
    config = write(tmp_path / "c.toml", 'gracee = "1h"\n')
    with pytest.raises(ConfigError, match=r"unknown key.*gracee"):
        load_settings({"root": root}, config_file=config, env={})


def test_invalid_toml(tmp_path: Path, root: str) -> None:
    config = write(tmp_path / "c.toml", "grace = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"root": root}, config_file=config, env={})


def test_missing_config_file(tmp_path: Path, root: str) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({"root": root}, config_file=str(tmp_path / "nope.toml"), env={})


def test_toml_duration_must_be_a_string(tmp_path: Path, root: str) -> None:
    config = write(tmp_path / "c.toml", "grace = 3600\n")
    with pytest.raises(ConfigError, match="duration string"):
        load_settings({"root": root}, config_file=config, env={})


def test_unknown_cli_option(root: str) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        load_settings({"root": root, "graze": "1h"}, env={})


def test_missing_storage() -> None:
    with pytest.raises(ConfigError, match="no storage"):
        load_settings({}, env={})
    assert load_settings({}, env={}, require_storage=False).storage == {}


def test_root_and_registry_config_contradict(tmp_path: Path, root: str) -> None:
    with pytest.raises(ConfigError, match="--root and --registry-config contradict"):
        load_settings({"root": root, "registry_config": "x.yml"}, env={})


def test_root_and_storage_table_in_one_file_contradict(tmp_path: Path, root: str) -> None:
    config = write(
        tmp_path / "c.toml",
        f"""
        root = "{root}"
        [storage.filesystem]
        rootdirectory = "{root}"
        """,
    )
    with pytest.raises(ConfigError, match="contradict"):
        load_settings({}, config_file=config, env={})


def test_higher_layer_storage_source_overrides_a_lower_one(tmp_path: Path, root: str) -> None:
    registry = write(
        tmp_path / "config.yml",
        "storage:\n  s3:\n    bucket: b\n    region: us-east-1\n",
    )
    s = load_settings({"root": root}, env={"LAYERGC_REGISTRY_CONFIG": registry})
    assert s.storage == {"driver": "filesystem", "rootdirectory": root}
    assert s.registry_config is None
    s = load_settings({}, env={"LAYERGC_REGISTRY_CONFIG": registry, "LAYERGC_ROOT": ""})
    assert s.storage["driver"] == "s3" and s.root is None


def test_schedule_and_interval(root: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="contradict"):
        load_settings({"root": root, "schedule": "0 3 * * *", "interval": "6h"}, env={})
    config = write(tmp_path / "c.toml", 'schedule = "0 3 * * *"\n')
    s = load_settings({"root": root, "interval": "6h"}, config_file=config, env={})
    assert (s.schedule, s.interval) == (None, timedelta(hours=6))


@pytest.mark.parametrize("cron", ["0 3 * *", "61 * * * *", "every day"])
def test_bad_cron(root: str, cron: str) -> None:
    with pytest.raises(ConfigError, match="crontab"):
        load_settings({"root": root, "schedule": cron}, env={})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("interval", "0s"),
        ("lease_ttl", "0s"),
        ("log_format", "xml"),
        ("metrics_addr", "9464"),
        ("after_delete_timeout", "0s"),
    ],
)
def test_invalid_values(root: str, option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=option.replace("_", "-")):
        load_settings({"root": root, option: value}, env={})


def test_purge_interval_zero_disables(root: str) -> None:
    assert load_settings({"root": root, "purge_interval": "0s"}, env={}).purge_interval == (
        timedelta(0)
    )


# --- the Go registry's config.yml ---------------------------------------------------------

S3_CONFIG = """
version: 0.1
log:
  level: info
storage:
  s3:
    bucket: registry
    region: us-east-1
    regionendpoint: http://127.0.0.1:5000
    rootdirectory: /prefix
    accesskey: AK
    secretkey: SK
    secure: false
    chunksize: 5242880
  cache:
    blobdescriptor: redis
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
redis:
  addr: 127.0.0.1:6379
  password: pw
  db: 3
http:
  addr: :5000
"""


def test_registry_config_s3_and_redis(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yml", S3_CONFIG)
    s = load_settings({"registry_config": path}, env={})
    assert s.storage == {
        "driver": "s3",
        "bucket": "registry",
        "region": "us-east-1",
        "regionendpoint": "http://127.0.0.1:5000",
        "rootdirectory": "/prefix",
        "accesskey": "AK",
        "secretkey": "SK",
        "secure": False,
        "chunksize": 5242880,
    }
    assert (s.blob_cache, s.redis_addr, s.redis_password, s.redis_db) == (
        "redis",
        "127.0.0.1:6379",
        "pw",
        3,
    )
    shown = s.redacted()
    assert shown["storage"]["secretkey"] == "***" and shown["redis_password"] == "***"
    assert shown["grace"] == "24h"


def test_registry_config_filesystem_and_inmemory_cache(tmp_path: Path, root: str) -> None:
    path = write(
        tmp_path / "config.yml",
        f"""
        storage:
          filesystem:
            rootdirectory: {root}
          cache:
            blobdescriptor: inmemory
        """,
    )
    s = load_settings({"registry_config": path}, env={})
    assert s.storage == {"driver": "filesystem", "rootdirectory": root}
    assert s.blob_cache == "inmemory" and s.redis_addr is None


def test_registry_config_filesystem_default_root(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yml", "storage:\n  filesystem: {}\n")
    assert load_settings({"registry_config": path}, env={}).storage["rootdirectory"] == (
        "/var/lib/registry"
    )


def test_registry_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yml", S3_CONFIG)
    env = {
        "REGISTRY_STORAGE_S3_SECRETKEY": "0123",  # stays a string, not YAML's octal 83
        "REGISTRY_STORAGE_S3_BUCKET": "other",
        "REGISTRY_REDIS_ADDR": "redis:6380",
        "REGISTRY_HTTP_ADDR": ":6000",  # not storage: ignored
    }
    s = load_settings({"registry_config": path}, env=env)
    assert s.storage["secretkey"] == "0123" and s.storage["bucket"] == "other"
    assert s.redis_addr == "redis:6380"


def test_registry_env_switches_driver(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yml", "storage:\n  filesystem:\n    rootdirectory: /x\n")
    env = {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_BUCKET": "b",
        "REGISTRY_STORAGE_S3_REGION": "r",
    }
    s = load_settings({"registry_config": path}, env=env)
    assert s.storage == {"driver": "s3", "bucket": "b", "region": "r"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("storage: [\n", "not valid YAML"),
        ("- a\n", "mapping at the top"),
        ("http:\n  addr: :5000\n", "no storage section"),
        ("storage:\n  azure: {}\n", "not supported"),
        ("storage:\n  s3: {bucket: b}\n", "needs region"),
        ("storage:\n  filesystem: {}\n  s3: {bucket: b, region: r}\n", "exactly one driver"),
        ("storage:\n  filesystem: {}\n  cache: {blobdescriptor: redis}\n", "no redis.addr"),
        ("storage:\n  filesystem: {}\n  cache: {blobdescriptor: memcache}\n", "memcache"),
        (
            "storage:\n  filesystem: {}\n  cache: {blobdescriptor: redis}\nredis: {addr: x}\n",
            "host:port",
        ),
    ],
)
def test_bad_registry_configs(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "config.yml", content)
    with pytest.raises(ConfigError, match=message):
        load_settings({"registry_config": path}, env={})


def test_unreadable_registry_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read registry config"):
        load_settings({"registry_config": str(tmp_path / "missing.yml")}, env={})


def test_storage_table_in_toml(tmp_path: Path) -> None:
    config = write(
        tmp_path / "layergc.toml",
        """
        db = "postgresql://layergc@db/layergc"
        interval = "6h"

        [storage.s3]
        bucket = "registry"
        region = "eu-west-1"

        [storage.cache]
        blobdescriptor = "redis"

        [redis]
        addr = "redis:6379"
        """,
    )
    s = load_settings({}, config_file=config, env={"REGISTRY_STORAGE_S3_BUCKET": "ignored"})
    assert s.storage == {"driver": "s3", "bucket": "registry", "region": "eu-west-1"}
    assert (s.blob_cache, s.redis_addr) == ("redis", "redis:6379")


def test_env_root_overrides_file_storage_table(tmp_path: Path, root: str) -> None:
    config = write(tmp_path / "c.toml", '[storage.s3]\nbucket = "b"\nregion = "r"\n')
    s = load_settings({}, config_file=config, env={"LAYERGC_ROOT": root})
    assert s.storage == {"driver": "filesystem", "rootdirectory": root}


def test_storage_must_be_a_table(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'storage = "s3"\n')
    with pytest.raises(ConfigError, match=r"\[storage\]"):
        load_settings({}, config_file=config, env={})


# --- drivers ----------------------------------------------------------------------------


def test_make_driver_filesystem(root: str) -> None:
    from layergc.driver.filesystem import FilesystemDriver

    driver = make_driver(load_settings({"root": root}, env={}))
    assert isinstance(driver, FilesystemDriver)
    driver.put_content("/docker/registry/v2/x", b"1")
    assert (Path(root) / "docker/registry/v2/x").read_bytes() == b"1"


def test_make_driver_missing_root(tmp_path: Path) -> None:
    settings = load_settings({"root": str(tmp_path / "absent")}, env={})
    with pytest.raises(ConfigError, match="not a directory"):
        make_driver(settings)


def test_make_driver_without_storage() -> None:
    with pytest.raises(ConfigError, match="no storage driver"):
        make_driver(load_settings({}, env={}, require_storage=False))


def test_make_driver_s3_from_registry_config(tmp_path: Path) -> None:
    from layergc.driver.s3 import S3Driver

    path = write(tmp_path / "config.yml", S3_CONFIG)
    env = {"REGISTRY_STORAGE_S3_CHUNKSIZE": "10485760"}  # a string, as the Go driver takes it
    driver = make_driver(load_settings({"registry_config": path}, env=env))
    assert isinstance(driver, S3Driver)
    assert (driver.bucket, driver.region, driver.chunksize) == ("registry", "us-east-1", 10485760)
    assert driver.endpoint_url == "http://127.0.0.1:5000"
