"""The deployment files agree with the code: docker-compose.yml, k8s/ and the Dockerfile.

Every Kubernetes document is checked against the official JSON schemas
(``kubernetes-validate``, offline, strict: unknown fields are errors). Every
``python -m app`` invocation must use a real subcommand and its flags, every
env var must be a real setting with a valid value, and the pieces must point
at each other (selectors, ports, scrape targets, ConfigMap names).
"""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.streaming._health import LOOP_DEADLINE
from app.streaming._wire import ENV_SCHEMAS, SCHEMA_NAMES
from app.streaming.settings import StreamingSettings, env_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
DOCKERFILE = K8S / "Dockerfile"
PROMETHEUS = K8S / "compose" / "prometheus.yml"
K8S_VERSION = "1.30"
ENTRYPOINT = ["python", "-m", "app"]

# env var -> settings field
SETTINGS_ENV: dict[str, str] = {env_name(name): name for name in StreamingSettings.model_fields}
OTHER_ENV = {ENV_SCHEMAS}  # read by the codec, not a StreamingSettings field
DEFAULT_METRICS_PORT = StreamingSettings.model_fields["metrics_port"].default
# Settings of the Faust-based worker: gone, and no deployment file may name them.
REMOVED_ENV = {"STREAMFLOW_WEB_PORT", "STREAMFLOW_DATA_DIR", "STREAMFLOW_STREAM_BUFFER"}
# Every deployment file, for what they mention (README and Dockerfile included).
DEPLOY_FILES = [COMPOSE, *sorted(p for p in K8S.rglob("*") if p.is_file())]
# What each probe of a worker container asks for.
PROBE_PATHS = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
# Static membership misbehaves with a shorter session (docs/architecture.md).
STATIC_MIN_SESSION_TIMEOUT = 10.0
# Time past the activities' drain for the commit and the leave of a stopping worker.
STOP_MARGIN = 15

# The command line the deployments use: flag -> whether it takes a value.
_TOPICS_FLAGS = {"--broker": True, "--partitions": True, "--replication": True, "--app-id": True}
CLI: dict[tuple[str, ...], dict[str, bool]] = {
    ("topics", "create"): _TOPICS_FLAGS,
    ("topics", "check"): _TOPICS_FLAGS,
    ("worker",): {
        "--broker": True,
        "--app": True,
        "--activities-only": False,
        "--no-activities": False,
        "--task-queue": True,
        "--metrics-port": True,
        "--partitions": True,
        "--app-id": True,
        "--instance-id": True,
    },
}


# -- helpers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """One ``python -m app ...`` command line, checked against :data:`CLI`."""

    command: tuple[str, ...]
    flags: dict[str, str | None] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """topics-create, topics-check, executor, activities or full (a worker doing both)."""
        if self.command != ("worker",):
            return "-".join(self.command)
        if "--no-activities" in self.flags:
            return "executor"
        return "activities" if "--activities-only" in self.flags else "full"


def parse_cli(args: list[str], where: str) -> Invocation:
    """``args`` (after ``python -m app``) as an Invocation; fails naming ``where``."""
    assert all(isinstance(a, str) for a in args), f"{where}: every argument must be a string"
    command = next((c for c in CLI if tuple(args[: len(c)]) == c), None)
    assert command is not None, f"{where}: {args} is not one of {sorted(' '.join(c) for c in CLI)}"
    spec = CLI[command]
    flags: dict[str, str | None] = {}
    rest = iter(args[len(command) :])
    for arg in rest:
        name, eq, inline = arg.partition("=")
        assert name in spec, f"{where}: unknown flag {name!r} for {' '.join(command)}"
        assert name not in flags, f"{where}: {name} given twice"
        if spec[name]:
            value = inline if eq else next(rest, None)
            assert value and not value.startswith("--"), f"{where}: {name} needs a value"
            flags[name] = value
        else:
            assert not eq, f"{where}: {name} takes no value"
            flags[name] = None
    if command == ("worker",):
        assert "--app" in flags, f"{where}: worker needs --app MODULE"
        assert not {"--activities-only", "--no-activities"} <= flags.keys(), (
            f"{where}: --activities-only and --no-activities exclude each other"
        )
        module = importlib.import_module(str(flags["--app"]))
        for name in ("workflows", "activities"):
            assert isinstance(getattr(module, name, None), list), (
                f"{where}: --app {flags['--app']} has no {name!r} list"
            )
    return Invocation(command, flags)


def check_settings_env(env: dict[str, Any], where: str) -> StreamingSettings:
    """Every name is a real setting and the values make valid settings."""
    unknown = set(env) - SETTINGS_ENV.keys() - OTHER_ENV
    assert not unknown, f"{where}: {sorted(unknown)} are not settings ({sorted(SETTINGS_ENV)})"
    values = {SETTINGS_ENV[k]: str(v) for k, v in env.items() if k in SETTINGS_ENV}
    return StreamingSettings.create(**values)


def metrics_port(inv: Invocation, settings: StreamingSettings) -> int:
    port = inv.flags.get("--metrics-port")
    return int(port) if port is not None else settings.metrics_port


def seconds(duration: str | int) -> float:
    """A compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    text = str(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- every deployment file --------------------------------------------------------
@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_files_name_only_real_settings(path: Path) -> None:
    """No Faust, no removed setting, and every STREAMFLOW_* named is a real one."""
    text = path.read_text()
    where = path.relative_to(ROOT)
    assert "faust" not in text.lower(), f"{where} still mentions Faust"
    named = set(re.findall(r"\bSTREAMFLOW_[A-Z0-9_]*[A-Z0-9]", text))
    assert not named & REMOVED_ENV, f"{where} names removed settings {sorted(named & REMOVED_ENV)}"
    unknown = named - SETTINGS_ENV.keys() - OTHER_ENV
    assert not unknown, f"{where}: {sorted(unknown)} are not settings"


def test_removed_settings_are_gone() -> None:
    assert not REMOVED_ENV & SETTINGS_ENV.keys()


# -- docker-compose.yml ---------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def engine_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run the engine's image."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def invocations(services: dict[str, dict[str, Any]]) -> dict[str, Invocation]:
    return {
        name: parse_cli(svc["command"], f"docker-compose.yml service {name}")
        for name, svc in engine_services(services).items()
    }


def test_compose_has_the_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "kafka",
        "topics",
        "executor-1",
        "executor-2",
        "activities",
        "prometheus",
    }
    roles = sorted(inv.role for inv in invocations(services).values())
    assert roles == ["activities", "executor", "executor", "topics-create"]


def test_compose_kafka_is_apache_kafka_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert "healthcheck" in kafka

    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) == set(protocols)
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        f"{env['KAFKA_NODE_ID']}@kafka:{listeners[controller].rpartition(':')[2]}"
    )
    # Every in-compose client bootstraps from an advertised listener that the broker binds.
    by_address = {address: name for name, address in advertised.items()}
    for name, svc in engine_services(services).items():
        bootstrap = svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap in by_address, f"{name}: {bootstrap} is not an advertised listener"
        listener = by_address[bootstrap]
        assert listeners[listener].rpartition(":")[2] == bootstrap.rpartition(":")[2]
        assert bootstrap.partition(":")[0] == kafka["hostname"] == "kafka"
    # The host reaches the broker on a published port that is advertised as localhost.
    published = {str(p).split(":")[0] for p in kafka["ports"]}
    assert any(a == f"localhost:{port}" for a in advertised.values() for port in published)


def test_compose_engine_services_build_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    engine = engine_services(services)
    assert set(engine) == {"topics", "executor-1", "executor-2", "activities"}
    for name, svc in engine.items():
        assert svc["build"] == {"context": ".", "dockerfile": "k8s/Dockerfile"}, name
        assert "entrypoint" not in svc, f"{name}: the image's entrypoint is python -m app"
    assert len({svc["image"] for svc in engine.values()}) == 1


def test_compose_env_vars_are_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    topologies = set()
    for name, svc in engine_services(services).items():
        settings = check_settings_env(svc["environment"], f"docker-compose.yml service {name}")
        topologies.add((settings.app_id, settings.generation, settings.partitions))
    assert len(topologies) == 1, "topics and workers must agree on app id, generation, partitions"


def test_compose_start_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["topics"].get("restart") == "no"
    for name, inv in invocations(services).items():
        if inv.command != ("worker",):
            continue
        assert services[name]["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "topics": {"condition": "service_completed_successfully"},
        }, name
    for name in ("kafka", "executor-1", "executor-2", "activities", "prometheus"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_compose_worker_healthchecks_ask_readyz(
    services: dict[str, dict[str, Any]],
) -> None:
    """Healthy means ready; urlopen raises on a 503, so the check fails then."""
    for name, inv in invocations(services).items():
        if inv.command != ("worker",):
            continue
        settings = check_settings_env(services[name]["environment"], name)
        check = services[name]["healthcheck"]
        test = check["test"]
        assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4, name
        urls = re.findall(r"urlopen\('([^']+)'", test[3])
        assert urls == [f"http://127.0.0.1:{metrics_port(inv, settings)}/readyz"], name
        compile(test[3], f"{name} healthcheck", "exec")
        # The probe's own timeout fits in the check's, and a start has time to read back.
        assert 0 < seconds(check["timeout"]) <= seconds(check["interval"]), name
        assert check["retries"] >= 2, name
        assert seconds(check["start_period"]) >= 30, name


def test_compose_workers_get_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    for name, inv in invocations(services).items():
        if inv.command != ("worker",):
            continue
        settings = check_settings_env(services[name]["environment"], name)
        grace = seconds(services[name].get("stop_grace_period", "10s"))
        assert grace >= settings.drain_timeout + STOP_MARGIN, (
            f"{name}: stop_grace_period {grace:g}s leaves no time past the "
            f"{settings.drain_timeout:g}s drain to commit and leave the group"
        )
        # One id shared by several members fences them out of the group.
        assert settings.instance_id is None, f"{name}: STREAMFLOW_INSTANCE_ID in a shared env"


def test_prometheus_scrapes_every_worker(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts == {"./k8s/compose/prometheus.yml": "/etc/prometheus/prometheus.yml"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    workers = {
        f"{name}:{metrics_port(inv, check_settings_env(services[name]['environment'], name))}"
        for name, inv in invocations(services).items()
        if inv.command == ("worker",)
    }
    assert targets == workers
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )


# -- k8s/Dockerfile -------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation at the end of the Dockerfile"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_the_kafka_extra_and_runs_the_cli_as_non_root() -> None:
    steps = dockerfile_instructions()
    stages = [args.split()[0] for kind, args in steps if kind == "FROM"]
    assert stages and all(image == "python:3.11-slim" for image in stages)
    assert any(kind == "RUN" and 'pip install ".[kafka]"' in args for kind, args in steps)

    users = [args for kind, args in steps if kind == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")

    entrypoints = [args for kind, args in steps if kind == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ENTRYPOINT

    # The installed package has no schemas/: the image copies them and says where.
    env: dict[str, str] = {}
    for kind, args in steps:
        if kind == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    copies = [shlex.split(args) for kind, args in steps if kind == "COPY"]
    assert ["schemas", env[ENV_SCHEMAS]] in copies
    assert all((ROOT / "schemas" / f"{name}.avsc").is_file() for name in SCHEMA_NAMES)


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        Path(source).name
        for args in (shlex.split(a) for k, a in dockerfile_instructions() if k == "COPY")
        if not args[0].startswith("--from")
        for source in args[:-1]
    }
    needed = packages | {"pyproject.toml", pyproject["project"]["readme"], "schemas"}
    assert needed <= copied
    ignored = {
        line.strip()
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not needed & ignored


# -- k8s manifests --------------------------------------------------------------
def manifest_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCUMENTS = manifest_documents()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in by_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def pod_specs() -> dict[str, dict[str, Any]]:
    """``Kind/name`` -> pod spec of every workload."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
        for _, doc in DOCUMENTS
        if doc["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def configmap() -> dict[str, Any]:
    maps = by_kind("ConfigMap")
    assert len(maps) == 1
    return maps[0]


def k8s_settings() -> StreamingSettings:
    return check_settings_env(configmap()["data"], "k8s ConfigMap")


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in DOCUMENTS],
    ids=[f"{path}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in DOCUMENTS],
)
def test_manifest_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_manifests_are_namespace_less_and_complete() -> None:
    kinds = sorted(doc["kind"] for _, doc in DOCUMENTS)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "Service",
    ]
    assert all("namespace" not in doc["metadata"] for _, doc in DOCUMENTS)


def test_configmap_keys_are_valid_settings() -> None:
    settings = k8s_settings()
    assert settings.metrics_port != 0, "the probes and the Service need the metrics server"
    # Every pod reads the ConfigMap: one id shared by several members fences them out.
    assert settings.instance_id is None, "STREAMFLOW_INSTANCE_ID must be set per pod"


def test_containers_run_the_cli_with_the_configmap() -> None:
    name = configmap()["metadata"]["name"]
    images = set()
    for workload, spec in pod_specs().items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload} container {container['name']}"
            images.add(container["image"])
            assert container.get("command", ENTRYPOINT) == ENTRYPOINT, where
            parse_cli(container["args"], where)
            assert {"configMapRef": {"name": name}} in container.get("envFrom", []), where
            check_container_env(container, where)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
    assert len(images) == 1


def check_container_env(container: dict[str, Any], where: str) -> None:
    """Env names are settings (or referenced in args), literal values are valid ones."""
    env = container.get("env", [])
    referenced = {
        ref for arg in container.get("args", []) for ref in re.findall(r"\$\((\w+)\)", arg)
    }
    defined = {e["name"] for e in env}
    assert referenced <= defined, f"{where}: args use undefined {sorted(referenced - defined)}"
    check_settings_env({e["name"]: e["value"] for e in env if "value" in e}, where)
    unknown = defined - SETTINGS_ENV.keys() - OTHER_ENV - referenced
    assert not unknown, f"{where}: {sorted(unknown)} are not settings"


def worker_containers() -> dict[str, dict[str, Any]]:
    """``Kind/name`` -> the worker container of every worker workload."""
    workers = {}
    for workload, spec in pod_specs().items():
        for container in spec["containers"]:
            if parse_cli(container["args"], workload).command == ("worker",):
                workers[f"{workload} container {container['name']}"] = container
    return workers


def roles(spec: dict[str, Any], key: str) -> list[str]:
    return [parse_cli(c["args"], c["name"]).role for c in spec.get(key, [])]


def test_workloads_have_the_expected_roles() -> None:
    job = one("Job", "streamflow-topics")["spec"]["template"]["spec"]
    assert roles(job, "containers") == ["topics-create"]
    executor = one("Deployment", "streamflow-executor")["spec"]["template"]["spec"]
    activities = one("Deployment", "streamflow-activities")["spec"]["template"]["spec"]
    assert roles(executor, "containers") == ["executor"]
    assert roles(activities, "containers") == ["activities"]
    # Workers wait for the topics: an init container that fails until they exist.
    assert (
        roles(executor, "initContainers") == roles(activities, "initContainers") == ["topics-check"]
    )


def test_executor_replicas_fit_the_partitions() -> None:
    executor = one("Deployment", "streamflow-executor")
    assert 1 <= executor["spec"]["replicas"] <= k8s_settings().partitions
    assert "partitions" in (K8S / "executor.yaml").read_text().lower()


def test_activity_autoscaler() -> None:
    hpa = one("HorizontalPodAutoscaler", "streamflow-activities")["spec"]
    deployment = one("Deployment", "streamflow-activities")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= k8s_settings().partitions
    # CPU utilization is relative to the request: every container must declare one.
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert "cpu" in container["resources"]["requests"], container["name"]


def test_selectors_select_their_pods() -> None:
    for doc in by_kind("Deployment"):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_metrics_service_exposes_every_worker() -> None:
    port = k8s_settings().metrics_port
    services = by_kind("Service")
    assert len(services) == 1
    service = services[0]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    selector = service["spec"]["selector"].items()

    # Not ready (rebalancing, reading partitions) is when metrics matter most.
    assert service["spec"].get("publishNotReadyAddresses") is True

    for workload in by_kind("Deployment"):
        labels = workload["spec"]["template"]["metadata"]["labels"].items()
        assert selector <= labels, f"{workload['metadata']['name']} is not scraped"
        [container] = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[service_port["targetPort"]] == port
        for probe in PROBE_PATHS:
            assert container[probe]["httpGet"]["port"] == service_port["targetPort"]
    for job in by_kind("Job"):
        labels = job["spec"]["template"]["metadata"]["labels"].items()
        assert not selector <= labels, "the topics Job has no metrics to scrape"


def test_worker_probes_ask_healthz_and_readyz() -> None:
    workers = worker_containers()
    assert len(workers) == 2
    for where, container in workers.items():
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind, path in PROBE_PATHS.items():
            probe = container[kind]
            assert set(probe) & {"httpGet", "tcpSocket", "exec", "grpc"} == {"httpGet"}, where
            assert probe["httpGet"]["path"] == path, f"{where}: {kind} must GET {path}"
            assert ports[probe["httpGet"]["port"]] == k8s_settings().metrics_port, where
            # Both paths wait up to LOOP_DEADLINE for the event loop before answering 503.
            assert probe.get("timeoutSeconds", 1) > LOOP_DEADLINE, f"{where}: {kind} timeout"
        startup, ready = container["startupProbe"], container["readinessProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, where
        assert ready.get("periodSeconds", 10) <= 10, where
        assert "successThreshold" not in container["livenessProbe"], where


def test_workers_write_only_tmp() -> None:
    """No data directory: the root filesystem is read-only and /tmp the one writable place."""
    for workload, spec in pod_specs().items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = set()
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload} container {container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = container.get("volumeMounts", [])
            mounted |= {m["name"] for m in mounts}
            if container in spec["containers"] and container["args"][0] == "worker":
                assert [m["mountPath"] for m in mounts] == ["/tmp"], where
        assert mounted == set(volumes), f"{workload}: volumes unused or missing"
        assert all(v == {"name": v["name"], "emptyDir": {}} for v in volumes.values()), workload


def test_workers_get_time_to_drain() -> None:
    drain = k8s_settings().drain_timeout
    for workload, spec in pod_specs().items():
        if not any(c["args"][0] == "worker" for c in spec["containers"]):
            continue
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace >= drain + STOP_MARGIN, (
            f"{workload}: terminationGracePeriodSeconds {grace} leaves no time past the "
            f"{drain:g}s drain (STREAMFLOW_DRAIN_TIMEOUT) to commit and leave the group"
        )


def test_readme_explains_partition_bound_scaling() -> None:
    text = (K8S / "README.md").read_text()
    assert "STREAMFLOW_PARTITIONS" in text
    assert "STREAMFLOW_GENERATION" in text


def test_readme_explains_the_probes_and_stopping() -> None:
    text = (K8S / "README.md").read_text()
    for word in ("/healthz", "/readyz", "liveness", "readiness", "startup"):
        assert word in text, word
    assert "STREAMFLOW_DRAIN_TIMEOUT" in text and "terminationGracePeriodSeconds" in text


def test_readme_static_membership_recipe_makes_a_valid_statefulset() -> None:
    """The README's recipe, applied to executor.yaml, is a valid StatefulSet."""
    text = (K8S / "README.md").read_text()
    heading = text.index("## Static membership")
    section = text[heading:]
    for word in ("StatefulSet", "STREAMFLOW_INSTANCE_ID", "--instance-id", "LeaveGroup"):
        assert word in section, word
    assert "STREAMFLOW_SESSION_TIMEOUT" in section
    assert k8s_settings().session_timeout >= STATIC_MIN_SESSION_TIMEOUT, (
        "static membership needs STREAMFLOW_SESSION_TIMEOUT >= "
        f"{STATIC_MIN_SESSION_TIMEOUT:g} s in the ConfigMap"
    )

    [block] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    patch = yaml.safe_load(textwrap.dedent(block))
    deployment = one("Deployment", "streamflow-executor")
    statefulset = copy.deepcopy(deployment)
    statefulset["kind"] = "StatefulSet"
    spec = statefulset["spec"]
    del spec["strategy"]
    spec.update(
        updateStrategy={"type": "RollingUpdate"},
        serviceName=by_kind("Service")[0]["metadata"]["name"],
        podManagementPolicy="Parallel",
    )
    [container] = spec["template"]["spec"]["containers"]
    container.update(patch)
    kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)

    inv = parse_cli(container["args"], "README StatefulSet")
    assert inv.role == "executor"
    check_container_env(container, "README StatefulSet")
    [pod_name] = [e for e in container["env"] if f"$({e['name']})" == inv.flags["--instance-id"]]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
