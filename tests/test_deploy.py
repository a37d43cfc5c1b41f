"""deploy/: systemd units, the container image, Kubernetes manifests, compose, README.

The structure of every manifest is checked here; `systemd-analyze verify` and
`kubectl kustomize` run where they are available (optional, as the issue says).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger

from layergc.config import OPTIONS, Settings, env_var, load_settings, parse_duration

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
UNITS = ("layergc.service", "layergc-sweep.service", "layergc-sweep.timer")
STATE_DIR = "/var/lib/layergc"
STORAGE_ROOT = "/var/lib/docker-registry"
METRICS_PORT = 9464


# --- systemd ------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: stray line {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


@pytest.mark.parametrize("name", ["layergc.service", "layergc-sweep.service"])
def test_services_are_hardened(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    service = unit["Service"]
    assert one(unit, "Service", "User") == "layergc"
    assert one(unit, "Service", "Group") == "layergc"
    assert "DynamicUser" not in service or one(unit, "Service", "DynamicUser") == "no"
    expected = {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "StateDirectory": "layergc",
        "WorkingDirectory": STATE_DIR,
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    # Writable: the storage root and the state directory, nothing else.
    writable = [p.lstrip("-") for v in service["ReadWritePaths"] for p in v.split()]
    assert sorted(writable) == sorted([STORAGE_ROOT, STATE_DIR])
    assert "@system-service" in service["SystemCallFilter"]
    assert any(f.startswith("~") and "@privileged" in f for f in service["SystemCallFilter"])
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    # serve/sweep get SIGTERM and up to 40 s; they stop within 30.
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert parse_duration(one(unit, "Service", "TimeoutStopSec")) >= timedelta(seconds=30)


def test_serve_and_sweep_commands() -> None:
    serve = parse_unit(SYSTEMD / "layergc.service")
    sweep = parse_unit(SYSTEMD / "layergc-sweep.service")
    assert one(serve, "Service", "ExecStart").split()[1] == "serve"
    assert one(serve, "Service", "Type") == "exec"
    assert one(serve, "Service", "Restart") == "on-failure"
    assert one(serve, "Install", "WantedBy") == "multi-user.target"
    assert one(sweep, "Service", "ExecStart").split()[1] == "sweep"
    assert one(sweep, "Service", "Type") == "oneshot"
    assert "Install" not in sweep  # started by the timer only
    for unit in (serve, sweep):
        command = one(unit, "Service", "ExecStart").split()
        assert command[0].endswith("/layergc") and command[0].startswith("/")
        assert command[2:] == ["--config", "/etc/layergc/layergc.toml"]


def test_timer_is_nightly_and_persistent() -> None:
    timer = parse_unit(SYSTEMD / "layergc-sweep.timer")
    assert one(timer, "Timer", "Unit") == "layergc-sweep.service"
    assert one(timer, "Timer", "OnCalendar") == "*-*-* 03:00:00"
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_sysusers_makes_the_dedicated_user() -> None:
    lines = [
        line.split()
        for line in (SYSTEMD / "layergc.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0][:2] == ["u", "layergc"] and lines[0][-1] == STATE_DIR
    assert ["m", "layergc", "docker-registry"] in lines


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (the check is optional)")
    return path


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    # The units name /opt/layergc/bin/layergc, which verify wants to exist.
    stub = tmp_path / "bin" / "layergc"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/layergc/bin/layergc", str(stub))
        (units / name).write_text(text)
    # A trivial unit first: systemd-analyze may exist and still refuse to work
    # (no systemd in a container, no permission): then the check is not available.
    probe = units / "probe.service"
    probe.write_text(f"[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart={stub}\n")
    sanity = subprocess.run(
        [analyze, "verify", "--man=no", str(probe)], capture_output=True, text=True, timeout=60
    )
    if sanity.returncode != 0:
        pytest.skip(f"systemd-analyze verify does not work here: {sanity.stderr.strip()[:300]}")
    probe.unlink()
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(units / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # verify warns (and still exits 0) about unknown keys and unparsable values.
    ours = [line for line in result.stderr.splitlines() if "layergc" in line]
    assert not ours, "\n".join(ours)


def test_timer_calendar_is_valid() -> None:
    analyze = systemd_analyze()
    timer = parse_unit(SYSTEMD / "layergc-sweep.timer")
    result = subprocess.run(
        [analyze, "calendar", one(timer, "Timer", "OnCalendar")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "Failed to" in result.stderr and result.returncode != 0:
        pytest.skip(f"systemd-analyze calendar does not work here: {result.stderr[:200]}")
    assert result.returncode == 0 and "Next elapse" in result.stdout


# --- container image ----------------------------------------------------------------


def containerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def test_containerfile() -> None:
    instructions = containerfile()
    froms = [args for word, args in instructions if word == "FROM"]
    assert all("python:3.11-slim" in f for f in froms)
    final = final_stage(instructions)
    words = dict(final)
    assert words["ENTRYPOINT"] == '["layergc"]'
    assert words["USER"].split(":")[0] == "10001"  # numeric and non-root
    assert words["CMD"] == '["serve", "--metrics-addr", "0.0.0.0:9464"]'
    assert words["EXPOSE"] == str(METRICS_PORT)
    # USER comes after the last RUN: nothing installed as the user, no root at run time.
    last_run = max(i for i, (w, _) in enumerate(final) if w == "RUN")
    assert max(i for i, (w, _) in enumerate(final) if w == "USER") > last_run
    assert "pip install" in " ".join(args for w, args in final if w == "RUN")


def test_containerfile_copies_what_the_build_needs() -> None:
    copied = {
        src.rstrip("/")
        for word, args in containerfile()
        if word == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    }
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "layergc", "migrations"}
    assert needed <= copied
    for src in copied:
        assert (REPO / src).exists(), src


# --- YAML everywhere --------------------------------------------------------------------


def yaml_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted([*K8S.glob("*.yaml"), DEPLOY / "compose.yaml"]):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            yield path, doc


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in yaml_documents() if p.parent == K8S and "kind" in d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_objects() if d["kind"] == kind]


def test_every_yaml_parses_and_has_the_basics() -> None:
    docs = list(yaml_documents())
    assert len(docs) >= 8
    for path, doc in docs:
        if path.name == "compose.yaml":
            continue
        assert isinstance(doc.get("apiVersion"), str) and doc.get("kind"), path
        if doc["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "layergc"


API_VERSIONS = {
    "Deployment": "apps/v1",
    "CronJob": "batch/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


def test_kinds_and_api_versions() -> None:
    kinds = {d["kind"] for _, d in k8s_objects()}
    assert {"Deployment", "CronJob", "Service", "ConfigMap", "Secret"} <= kinds
    for path, doc in k8s_objects():
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], path


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secrets() -> dict[str, set[str]]:
    return {d["metadata"]["name"]: set(d["stringData"]) for d in by_kind("Secret")}


def configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in by_kind("ConfigMap")}


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_pods_run_layergc_securely_with_the_db_from_a_secret(kind: str) -> None:
    for doc in by_kind(kind):
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["terminationGracePeriodSeconds"] >= 30
        (container,) = spec["containers"]
        assert container["image"] and ":" in container["image"]
        assert container["command"] == ["layergc"]
        assert container["args"][0] == ("serve" if kind == "Deployment" else "sweep")
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        env = env_of(container)
        db = env["LAYERGC_DB"]["valueFrom"]["secretKeyRef"]
        for name, entry in env.items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets()[ref["name"]], name
        assert db["name"] in secrets()
        # Volumes: every mount has a volume; config maps exist and hold the files.
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        config_path = env["LAYERGC_CONFIG"]["value"]
        directory, _, filename = config_path.rpartition("/")
        assert filename in configmaps()[mounts[directory]["configMap"]["name"]]
        assert "/tmp" in mounts  # writable scratch under a read-only root


def test_deployment_probes_and_replicas() -> None:
    (deployment,) = by_kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    (container,) = pod_spec(deployment)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert ports.get(http["port"], http["port"]) == METRICS_PORT, probe
    env = env_of(container)
    assert env["LAYERGC_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_service_selects_the_deployment() -> None:
    (service,) = by_kind("Service")
    (deployment,) = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"] for p in pod_spec(deployment)["containers"][0]["ports"]}
    assert port["port"] == METRICS_PORT and port["targetPort"] in container_ports


def test_cronjob_schedule_and_policy() -> None:
    (cronjob,) = by_kind("CronJob")
    spec = cronjob["spec"]
    CronTrigger.from_crontab(spec["schedule"])  # raises on an invalid expression
    assert spec["concurrencyPolicy"] == "Forbid"
    assert pod_spec(cronjob)["restartPolicy"] in ("Never", "OnFailure")


def test_kustomization_resources_exist() -> None:
    (kustomization,) = by_kind("Kustomization")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_kubectl_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the check is optional)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout))
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_kubernetes_config_is_valid_layergc_config(tmp_path: Path) -> None:
    """The ConfigMap's files load the way the pods load them (env from the Deployment)."""
    (config,) = configmaps().values()
    for name, content in config.items():
        (tmp_path / name).write_text(content)
    env = {
        "LAYERGC_CONFIG": str(tmp_path / "layergc.toml"),
        "LAYERGC_DB": "postgresql://layergc:x@postgresql:5432/layergc",
        "REGISTRY_STORAGE_S3_ACCESSKEY": "AK",
        "REGISTRY_STORAGE_S3_SECRETKEY": "SK",
    }
    s = load_settings({}, env=env)
    assert s.storage["driver"] == "s3"
    assert (s.storage["accesskey"], s.storage["secretkey"]) == ("AK", "SK")
    assert s.blob_cache == "redis" and s.redis_addr
    assert s.metrics_addr == f"0.0.0.0:{METRICS_PORT}" and s.schedule
    assert s.log_format == "json"


# --- compose ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services() -> None:
    doc = compose()
    services = doc["services"]
    assert {"registry", "postgres", "layergc"} <= set(services)
    assert services["registry"]["image"].endswith("registry:2")
    assert "postgres" in services["postgres"]["image"]
    layergc = services["layergc"]
    build = layergc["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "Containerfile"
    ).resolve()
    assert layergc["command"][0] == "serve"
    db = layergc["environment"]["LAYERGC_DB"]
    assert db.startswith("postgresql://") and "@postgres:5432/" in db
    pg_env = services["postgres"]["environment"]
    assert f"{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}@" in db
    assert db.endswith("/" + pg_env["POSTGRES_DB"])
    assert layergc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthz" in " ".join(layergc["healthcheck"]["test"])
    # Everything referenced exists: services, named volumes, bind-mounted files.
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), (name, source)
            else:
                assert source in doc["volumes"], (name, source)
    # layergc and the registry share the storage volume and the registry config.
    shared = {v.split(":")[0] for v in layergc["volumes"]} & {
        v.split(":")[0] for v in services["registry"]["volumes"]
    }
    assert {"registry-data", "./compose/registry-config.yml"} <= shared


def test_compose_registry_config_is_valid_layergc_config() -> None:
    layergc = compose()["services"]["layergc"]
    env = {k: str(v) for k, v in layergc["environment"].items()}
    (mount,) = [v for v in layergc["volumes"] if "registry-config" in v]
    source, target = mount.split(":")[:2]
    assert env["LAYERGC_REGISTRY_CONFIG"] == target
    env["LAYERGC_REGISTRY_CONFIG"] = str(DEPLOY / source)
    s = load_settings({}, env=env)
    assert s.storage == {"driver": "filesystem", "rootdirectory": "/var/lib/registry"}
    assert (s.blob_cache, s.redis_addr) == ("redis", "redis:6379")
    assert s.interval == timedelta(hours=6) and s.metrics_addr == f"0.0.0.0:{METRICS_PORT}"
    registry = yaml.safe_load((DEPLOY / source).read_text())
    # layergc purges uploads itself; the registry's own purger would race with it.
    assert registry["storage"]["maintenance"]["uploadpurging"]["enabled"] is False


# --- the example TOML and the README -------------------------------------------------------


def test_example_toml_loads(tmp_path: Path) -> None:
    s = load_settings({}, config_file=str(DEPLOY / "layergc.toml"), env={}, require_storage=False)
    assert s.registry_config == "/etc/docker/registry/config.yml"
    assert s.schedule == "0 3 * * *" and s.db.startswith("sqlite:////var/lib/layergc/")


def readme_table() -> dict[str, list[str]]:
    """TOML key -> row cells of the README's configuration reference."""
    rows = {}
    for line in (DEPLOY.parent / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2].startswith("`") and cells[1].startswith("`LAYERGC_"):
            rows[cells[2].strip("`")] = cells
    return rows


def test_readme_documents_every_option_with_its_default() -> None:
    rows = readme_table()
    defaults = {f.name: f for f in dataclasses.fields(Settings)}
    for option in OPTIONS:
        assert option in rows, f"README lacks {option}"
        flag, env, _key, default, _meaning = rows[option]
        assert flag.startswith("`--" + option.replace("_", "-")), option
        assert env == f"`{env_var(option)}`"
        value = defaults[option].default
        if isinstance(value, timedelta):
            assert parse_duration(default.strip("`")) == value, option
        elif isinstance(value, bool):
            assert default == f"`{str(value).lower()}`", option
        elif isinstance(value, str) and value:
            assert default == f"`{value}`", option
        else:
            assert default in ("none", "host-pid-random"), option
