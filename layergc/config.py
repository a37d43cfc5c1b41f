"""Settings of `layergc sweep` and `layergc serve`, from four layers.

Precedence, highest first: the command line, `LAYERGC_*` environment variables,
the TOML file (`--config`, or `LAYERGC_CONFIG`), the defaults below. Every
option has the same name in each layer: `--upload-timeout` on the command line,
`LAYERGC_UPLOAD_TIMEOUT` in the environment, `upload_timeout` in the file.

Storage comes from exactly one source: `root` (a filesystem root),
`registry_config` (a Go registry config.yml) or, in the TOML file only, a
`[storage]` table shaped like the registry config's `storage` section (with
optional `[storage.cache]` and `[redis]`). The highest layer that names a
source decides it alone, so `LAYERGC_ROOT` overrides a file's `[storage]`;
two sources in one layer are a contradiction. The same rule applies to the
sweep schedule: `schedule` (cron) and `interval` are one choice.

When storage comes from a registry config, the Go registry's own environment
overrides (`REGISTRY_STORAGE_S3_SECRETKEY`, `REGISTRY_REDIS_ADDR`, ...) are
applied as the registry applies them, so layergc sees the storage the registry
sees (that is how Kubernetes passes S3 secrets to both).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import durationpy

from layergc.errors import ConfigError

if TYPE_CHECKING:
    from layergc.driver.base import StorageDriver

DEFAULT_DB_URL = "sqlite:///layergc.db"
ENV_PREFIX = "LAYERGC_"
SUPPORTED_DRIVERS = ("filesystem", "s3")
# The Go registry's default when storage.filesystem has no rootdirectory.
GO_DEFAULT_FILESYSTEM_ROOT = "/var/lib/registry"
# Keys of the registry config's `storage` section that are not a driver.
_STORAGE_NON_DRIVER_KEYS = frozenset({"cache", "maintenance", "delete", "redirect", "tag"})
_SECRET_PARAMS = frozenset({"secretkey", "password", "accesskey", "sessiontoken"})


@dataclass(frozen=True)
class Settings:
    """Every option of `layergc sweep` and `layergc serve`, parsed and checked."""

    # --- storage ---------------------------------------------------------
    root: str | None = None
    registry_config: str | None = None
    config_file: str | None = None
    # {"driver": "filesystem", "rootdirectory": ...} or {"driver": "s3", "bucket": ...}
    storage: Mapping[str, Any] = field(default_factory=dict)
    blob_cache: str | None = None  # "redis" | "inmemory" | None
    redis_addr: str | None = None
    redis_password: str | None = None
    redis_db: int = 0
    # --- index and sweep -------------------------------------------------
    db: str = DEFAULT_DB_URL
    dry_run: bool = False
    delete_untagged: bool = False
    upload_timeout: timedelta = timedelta(hours=168)
    grace: timedelta = timedelta(hours=24)
    json: bool = False
    after_delete_command: str | None = None
    after_delete_timeout: timedelta = timedelta(seconds=120)
    settle: timedelta = timedelta(seconds=5)
    # --- daemon ------------------------------------------------------------
    schedule: str | None = None
    interval: timedelta | None = None
    purge_interval: timedelta = timedelta(hours=1)  # 0s turns the purge job off
    misfire_grace: timedelta = timedelta(hours=1)
    metrics_addr: str | None = None
    lease_ttl: timedelta = timedelta(seconds=60)
    replica_id: str = ""
    # --- logging -----------------------------------------------------------
    log_format: str = "text"
    log_level: str = "info"

    @property
    def driver_name(self) -> str | None:
        return self.storage.get("driver")

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data, secrets masked: safe to log."""
        out = dataclasses.asdict(self)
        out["storage"] = {
            k: ("***" if k in _SECRET_PARAMS and v else v) for k, v in self.storage.items()
        }
        if self.redis_password:
            out["redis_password"] = "***"
        out["db"] = _mask_url_password(self.db)
        for key, value in out.items():
            if isinstance(value, timedelta):
                out[key] = format_duration(value)
        return out


# --- value parsers ------------------------------------------------------------

# Go's time.ParseDuration grammar: a sequence of decimal numbers with units, or "0".
_GO_DURATION = re.compile(r"^[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_duration(value: Any, name: str = "duration") -> timedelta:
    """Parse a Go duration (`168h`, `1h30m`, `90s`, `0s`); refuse negative ones."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, str):
        text = value.strip()
        if text != "0" and not _GO_DURATION.fullmatch(text):
            raise ConfigError(
                f"{name}: {value!r} is not a duration (use Go's form: 168h, 30m, 90s, 1h30m, 0s)"
            )
        try:
            result = durationpy.from_str(text) if text != "0" else timedelta(0)
        except (ValueError, OverflowError) as exc:
            raise ConfigError(f"{name}: {value!r} is not a duration: {exc}") from None
    else:
        raise ConfigError(
            f"{name}: expected a duration string such as '24h', got {type(value).__name__}"
        )
    if result < timedelta(0):
        raise ConfigError(f"{name}: {value!r} is negative")
    return result


def format_duration(value: timedelta) -> str:
    """The Go form of a duration (`168h`, `1m30s`, `0s`)."""
    return durationpy.to_str(value) if value else "0s"


def parse_bool(value: Any, name: str = "flag") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name}: {value!r} is not a boolean (use true or false)")


def parse_addr(value: str, name: str = "address") -> tuple[str, int]:
    """Split `host:port`, `:port` (all interfaces) or `[v6]:port`; port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{name}: {value!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def _mask_url_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    return _text(value, name)


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _cron(value: Any, name: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    text = _text(value, name).strip()
    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {value!r} is not a crontab expression: {exc}") from None
    return text


def _addr(value: Any, name: str) -> str | None:
    text = _optional_text(value, name)
    if text is not None:
        parse_addr(text, name)
    return text


def _positive_duration(value: Any, name: str) -> timedelta:
    result = parse_duration(value, name)
    if not result:
        raise ConfigError(f"{name}: must be longer than 0s")
    return result


def _optional_interval(value: Any, name: str) -> timedelta | None:
    return None if value in (None, "") else _positive_duration(value, name)


# Option name -> parser. The keys are the names in every layer.
_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "root": _optional_text,
    "registry_config": _optional_text,
    # A URL or an SQLite file path; layergc.gc.db normalises it (postgresql:// -> psycopg).
    "db": _text,
    "dry_run": parse_bool,
    "delete_untagged": parse_bool,
    "upload_timeout": parse_duration,
    "grace": parse_duration,
    "json": parse_bool,
    "after_delete_command": _optional_text,
    "after_delete_timeout": _positive_duration,
    "settle": parse_duration,
    "schedule": lambda v, n: None if v in (None, "") else _cron(v, n),
    "interval": _optional_interval,
    "purge_interval": parse_duration,
    "misfire_grace": parse_duration,
    "metrics_addr": _addr,
    "lease_ttl": _positive_duration,
    "replica_id": _optional_text,
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error", "critical"),
}
OPTIONS = tuple(_PARSERS)
# Options whose values are alternatives: the highest layer naming one decides.
_STORAGE_SOURCES = ("root", "registry_config")
_SCHEDULE_CHOICES = ("schedule", "interval")
# TOML-only tables (the registry config's shape).
_FILE_TABLES = ("storage", "redis")


def env_var(option: str) -> str:
    return ENV_PREFIX + option.upper()


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


# --- loading ------------------------------------------------------------------


def load_settings(
    cli: Mapping[str, Any],
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    require_storage: bool = True,
) -> Settings:
    """Merge the command line, `LAYERGC_*` variables, the TOML file and defaults.

    `cli` maps option names (underscores) to values; None means "not given", so
    click flags must default to None. Values may be strings (parsed here) or
    already typed. `require_storage=False` serves commands that only touch the
    index (`report`, `db upgrade`).
    """
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    unknown = sorted(k for k in cli if k not in _PARSERS)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")

    file_values, file_tables = _read_toml(config_file) if config_file else ({}, {})
    layers = [
        _Layer({k: v for k, v in cli.items() if v is not None}, _flag),
        _Layer({k: env[env_var(k)] for k in _PARSERS if env_var(k) in env}, env_var),
        _Layer(file_values, lambda o: f"{o} in {config_file}", tables=file_tables),
    ]

    values: dict[str, Any] = {}
    for option, parse in _PARSERS.items():
        layer = next((layer for layer in layers if option in layer.values), None)
        if layer is not None:
            values[option] = parse(layer.values[option], layer.label(option))
    # Alternatives come from one layer only: drop those a higher layer overrode.
    for group in (_STORAGE_SOURCES, _SCHEDULE_CHOICES):
        decisive = _decisive_layer(layers, group)
        for option in group:
            if decisive is None or not decisive.values.get(option):
                values.pop(option, None)

    storage: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    if values.get("root"):
        storage = {"driver": "filesystem", "rootdirectory": values["root"]}
    elif values.get("registry_config"):
        storage, cache = _read_registry_config(values["registry_config"], env)
    elif _decisive_layer(layers, _STORAGE_SOURCES) is layers[-1] and "storage" in file_tables:
        # The file's own [storage]/[redis] tables; REGISTRY_* variables are the
        # registry's and do not apply to layergc's file.
        storage, cache = _storage_from_registry_config(
            file_tables, env={}, source=f"config file {config_file}"
        )
    if require_storage and not storage:
        raise ConfigError(
            "no storage given: use --root PATH, --registry-config CONFIG.yml, "
            "or a [storage] table in the config file"
        )

    if not values.get("replica_id"):
        values["replica_id"] = default_replica_id()
    return Settings(config_file=config_file, storage=storage, **cache, **values)


@dataclass
class _Layer:
    values: dict[str, Any]
    label: Callable[[str], str]  # how the user spelled an option in this layer
    tables: Mapping[str, Any] = field(default_factory=dict)

    def names(self, options: tuple[str, ...]) -> list[str]:
        given = [self.label(o) for o in options if self.values.get(o) not in (None, "")]
        if options == _STORAGE_SOURCES and "storage" in self.tables:
            given.append(self.label("[storage]"))
        return given


def _decisive_layer(layers: list[_Layer], options: tuple[str, ...]) -> _Layer | None:
    """The highest layer naming one of `options`; two of them in it contradict."""
    for layer in layers:
        given = layer.names(options)
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)} contradict each other: give one")
        if given:
            return layer
    return None


def _read_toml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(k for k in data if k not in _PARSERS and k not in _FILE_TABLES)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join((*OPTIONS, *_FILE_TABLES))}"
        )
    tables = {k: data.pop(k) for k in _FILE_TABLES if k in data}
    for key, value in tables.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config file {path}: {key} must be a table ([{key}])")
    # Paths in the file are relative to the file, not to wherever layergc starts.
    base = Path(path).absolute().parent
    for key in _STORAGE_SOURCES:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(base / data[key])
    return data, tables


def _read_registry_config(path: str, env: Mapping[str, str]) -> tuple[dict, dict]:
    import yaml  # only here: most runs have no registry config to read

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read registry config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"registry config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"registry config {path}: expected a mapping at the top")
    return _storage_from_registry_config(data, env, source=f"registry config {path}")


def _apply_registry_env(config: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply the Go registry's REGISTRY_STORAGE* and REGISTRY_REDIS_* overrides.

    As in the registry, `REGISTRY_A_B_C=v` sets config[a][b][c] = v and
    `REGISTRY_STORAGE=s3` switches the storage driver (the cache and other
    non-driver keys stay). Values stay strings: YAML would turn a secret key
    like `0123` into a number; the drivers accept strings for every parameter.
    """
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    # Sorted, so REGISTRY_STORAGE (the driver switch) comes before its parameters.
    for name in sorted(env):
        if not (
            name == "REGISTRY_STORAGE" or name.startswith(("REGISTRY_STORAGE_", "REGISTRY_REDIS_"))
        ):
            continue
        keys = name[len("REGISTRY_") :].lower().split("_")
        value = env[name]
        if keys == ["storage"]:
            storage = config.get("storage") if isinstance(config.get("storage"), dict) else {}
            kept = {k: v for k, v in storage.items() if k in _STORAGE_NON_DRIVER_KEYS}
            kept[value.lower()] = storage.get(value.lower()) or {}
            config["storage"] = kept
            continue
        node = config
        for key in keys[:-1]:
            child = node.get(key)
            node[key] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[keys[-1]] = value
    return config


def _storage_from_registry_config(
    config: dict[str, Any], env: Mapping[str, str], *, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(storage params, blob cache settings) from a registry config's sections."""
    config = _apply_registry_env(config, env)
    section = config.get("storage")
    if not isinstance(section, dict) or not section:
        raise ConfigError(f"{source}: no storage section")
    drivers = [k for k in section if k not in _STORAGE_NON_DRIVER_KEYS]
    if len(drivers) != 1:
        raise ConfigError(
            f"{source}: the storage section must name exactly one driver, found "
            f"{', '.join(drivers) or 'none'}"
        )
    driver = drivers[0]
    if driver not in SUPPORTED_DRIVERS:
        raise ConfigError(
            f"{source}: storage driver {driver!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_DRIVERS)})"
        )
    params = section[driver] or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: storage.{driver} must be a mapping")
    storage: dict[str, Any] = {"driver": driver, **{str(k).lower(): v for k, v in params.items()}}
    if driver == "filesystem":
        storage["rootdirectory"] = str(storage.get("rootdirectory") or GO_DEFAULT_FILESYSTEM_ROOT)
    else:
        missing = [k for k in ("bucket", "region") if not storage.get(k)]
        if missing:
            raise ConfigError(f"{source}: storage.s3 needs {' and '.join(missing)}")
    return storage, _cache_settings(section, config.get("redis"), source)


def _cache_settings(section: dict[str, Any], redis: Any, source: str) -> dict[str, Any]:
    cache = section.get("cache") or {}
    if not isinstance(cache, dict):
        raise ConfigError(f"{source}: storage.cache must be a mapping")
    kind = cache.get("blobdescriptor")
    if kind in (None, ""):
        return {}
    kind = str(kind).lower()
    if kind not in ("redis", "inmemory"):
        raise ConfigError(
            f"{source}: storage.cache.blobdescriptor {kind!r} is not redis or inmemory"
        )
    if kind == "inmemory":
        return {"blob_cache": kind}
    redis = redis or {}
    if not isinstance(redis, dict) or not redis.get("addr"):
        raise ConfigError(f"{source}: blobdescriptor is redis but there is no redis.addr")
    addr = str(redis["addr"])
    parse_addr(addr, f"{source}: redis.addr")
    try:
        db = int(redis.get("db") or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: redis.db {redis.get('db')!r} is not a number") from None
    password = redis.get("password")
    return {
        "blob_cache": kind,
        "redis_addr": addr,
        "redis_password": str(password) if password else None,
        "redis_db": db,
    }


def default_replica_id() -> str:
    """Unique per process: host, pid and a random suffix (pids repeat in containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --- drivers ------------------------------------------------------------------


def make_driver(settings: Settings) -> StorageDriver:
    """The storage driver the settings describe."""
    params = dict(settings.storage)
    name = params.pop("driver", None)
    if name == "filesystem":
        from layergc.driver.filesystem import FilesystemDriver

        root = params["rootdirectory"]
        if not os.path.isdir(root):
            raise ConfigError(f"storage root {root} is not a directory")
        # Made for one run and closed after it: the run sees one root throughout.
        return FilesystemDriver(root, hold_root=True)
    if name == "s3":
        from layergc.driver.s3 import S3Driver

        return S3Driver.from_registry_config(params)
    raise ConfigError(f"no storage driver configured (storage: {settings.storage!r})")
