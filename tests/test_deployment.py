"""The deployment files: docker/compose-scale.yml (two instances sharing Kafka and a MinIO snapshot
store) and docker/k8s (a StatefulSet of two, its Secret, ConfigMap and headless Service).

Neither can run here (no Docker engine, no cluster), so these tests read them as Compose and
Kubernetes would: Compose's ``extends`` and ``${VAR:-default}``, Kubernetes' downward API,
secret references and ``$(VAR)`` expansion. Each instance's configuration is then built the way
``stream serve`` builds it (its config file, then its ``STREAM__*`` variables) with the project's
own loader, and its probes and Prometheus scrape are sent to the project's own HTTP app with the
Host header a kubelet or Prometheus sends.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from stream.api import ANY_HOST_PATHS, HostCheck, create_app
from stream.config import Config, load_config
from stream.status import ServiceStatus

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
K8S = DOCKER / "k8s"
COMPOSE_SCALE = DOCKER / "compose-scale.yml"
QUICK_START = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"

# What the downward API gives the pods in these tests.
NAMESPACE = "stream"
POD_IPS = {"stream-0": "10.42.0.17", "stream-1": "10.42.1.23"}


# -- reading Compose ---------------------------------------------------------------------------

COMPOSE_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def _interpolate(value: Any) -> Any:
    """Compose's interpolation with no variable set: ``${VAR:-default}`` is its default, ``$$`` a
    ``$`` (left to the container's shell); a variable that must be set fails the test."""
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        op = match.group("op")
        if op is not None and op.endswith("?"):
            pytest.fail(f"{match.group(0)} must be set: the file should run with its defaults")
        return match.group("arg") if op is not None else ""

    return COMPOSE_VARIABLE.sub(replace, value)


def _compose(path: Path) -> dict[str, Any]:
    """The Compose file with its variables interpolated and each ``extends`` resolved."""
    compose = _interpolate(yaml.safe_load(path.read_text()))
    for name, service in compose["services"].items():
        extends = service.pop("extends", None)
        if extends is not None:
            base = _compose(path.parent / extends.get("file", path.name))["services"][extends["service"]]
            compose["services"][name] = {**base, **service}
    return compose


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _instances(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the stream image (built from docker/Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if (service.get("build") or {}).get("dockerfile") == "docker/Dockerfile"
    }


def _dockerfile(instruction: str) -> list[str]:
    """The arguments of every ``instruction`` line of docker/Dockerfile."""
    return [
        line.split(None, 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.split(None, 1)[:1] == [instruction]
    ]


# -- reading Kubernetes ------------------------------------------------------------------------


def _k8s_documents() -> dict[tuple[str, str], dict[str, Any]]:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None and document.get("kind") != "Kustomization":
                key = (document["kind"], document["metadata"]["name"])
                assert key not in documents, f"{key} is defined twice"
                documents[key] = document
    return documents


def _one(kind: str) -> dict[str, Any]:
    found = [document for (each, _), document in _k8s_documents().items() if each == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def _secret_data(name: str) -> dict[str, str]:
    secret = _k8s_documents()[("Secret", name)]
    return {**(secret.get("stringData") or {}), **(secret.get("data") or {})}


DEPENDENT_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _pod_environment(pod_name: str) -> dict[str, str]:
    """The container's environment in pod ``pod_name``, as the kubelet makes it: the downward API,
    secret and config map references, and ``$(VAR)`` of the variables defined before."""
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": POD_IPS[pod_name]}
    environment: dict[str, str] = {}
    for variable in _container().get("env", []):
        source = variable.get("valueFrom")
        if source is None:
            defined = dict(environment)

            def expand(match: re.Match[str], defined: dict[str, str] = defined) -> str:
                if match.group(0) == "$$":
                    return "$"
                return defined.get(match.group(1), match.group(0))

            value = DEPENDENT_VARIABLE.sub(expand, variable.get("value", ""))
        elif "fieldRef" in source:
            value = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            reference = source["secretKeyRef"]
            value = _secret_data(reference["name"])[reference["key"]]
        elif "configMapKeyRef" in source:
            reference = source["configMapKeyRef"]
            value = _k8s_documents()[("ConfigMap", reference["name"])]["data"][reference["key"]]
        else:
            pytest.fail(f"{variable['name']}: a source these tests do not know: {source}")
        environment[variable["name"]] = value
    return environment


def _configmap_config_text() -> str:
    return _one("ConfigMap")["data"]["config.yaml"]


# -- building an instance's configuration ------------------------------------------------------


@pytest.fixture
def effective_config(monkeypatch, tmp_path):
    """``(config text, environment) -> Config`` as ``stream serve`` loads it, with only that
    environment's STREAM__ variables (none of the machine running the tests)."""

    def build(config_text: str, environment: dict[str, str]) -> Config:
        with monkeypatch.context() as scope:
            for name in [name for name in os.environ if name.upper().startswith("STREAM__")]:
                scope.delenv(name)
            for name, value in environment.items():
                scope.setenv(name, value)
            path = tmp_path / "config.yaml"
            path.write_text(config_text)
            return load_config(path)

    return build


def _compose_instance_configs(build) -> dict[str, Config]:
    image_config = (DOCKER / "config.yaml").read_text()
    return {
        name: build(image_config, _environment(service))
        for name, service in _instances(_compose(COMPOSE_SCALE)).items()
    }


def _pod_configs(build) -> dict[str, Config]:
    return {pod: build(_configmap_config_text(), _pod_environment(pod)) for pod in POD_IPS}


def _get(config: Config, url: str, path: str) -> httpx.Response:
    """GET ``path`` from the service's HTTP app (configured by ``config``) at ``url``, whose host
    and port are the Host header, as a probe or a scrape sends them; the app's service is a stub
    that has just come round its loop and is not ready."""
    service = SimpleNamespace(
        config=config,
        alive_at=time.monotonic(),
        status=SimpleNamespace(latest=ServiceStatus()),
        telemetry=SimpleNamespace(exposition=lambda: b"# HELP stream_up 1\n"),
    )

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=url) as client:
            return await client.get(path)

    return asyncio.run(get())


# -- Compose: docker/compose-scale.yml ---------------------------------------------------------


def test_compose_scale_reuses_the_quick_start_kafka_with_its_healthcheck():
    raw = yaml.safe_load(COMPOSE_SCALE.read_text())["services"]["kafka"]
    assert raw["extends"] == {"file": "docker-compose.yml", "service": "kafka"}
    kafka = _compose(COMPOSE_SCALE)["services"]["kafka"]
    assert kafka == _compose(QUICK_START)["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["healthcheck"]["test"][0] == "CMD"


def test_compose_scale_has_a_minio_service_and_a_one_shot_bucket_creation():
    services = _compose(COMPOSE_SCALE)["services"]
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:RELEASE.")
    assert minio["command"][:2] == ["server", "/data"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    create = services["create-bucket"]
    assert create["image"].startswith("minio/mc:RELEASE.")
    assert create["depends_on"]["minio"]["condition"] == "service_healthy"
    assert _environment(create) == _environment(minio)  # the root credentials mc logs in with
    script = " ".join(create["command"])
    assert 'mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"' in script
    assert "mc mb --ignore-existing local/stream-snapshots" in script


def test_compose_scale_runs_two_instances_with_distinct_instance_ids(effective_config):
    configs = _compose_instance_configs(effective_config)
    assert sorted(configs) == ["stream-1", "stream-2"]
    assert {name: config.service.instance_id for name, config in configs.items()} == {
        "stream-1": "stream-1",
        "stream-2": "stream-2",
    }
    assert len({config.kafka.group_id for config in configs.values()}) == 1  # one consumer group
    assert {config.kafka.bootstrap_servers for config in configs.values()} == {"kafka:19092"}
    assert {config.service.guarantee for config in configs.values()} == {"exactly_once"}


def test_compose_scale_instances_share_the_s3_store_and_no_volume(effective_config):
    compose = _compose(COMPOSE_SCALE)
    instances = _instances(compose)
    for name, service in instances.items():
        assert "volumes" not in service, f"{name} mounts a volume: snapshots belong in the bucket"
    configs = _compose_instance_configs(effective_config)
    stores = {(str(c.snapshots.directory), c.snapshots.s3.endpoint_url) for c in configs.values()}
    assert stores == {("s3://stream-snapshots/stream", "http://minio:9000")}
    ((_, endpoint_url),) = stores
    endpoint = urlsplit(endpoint_url)  # the MinIO service, on the port its server listens on
    assert endpoint.hostname == "minio" and endpoint.port == 9000 and "minio" in compose["services"]
    keys = {config.snapshots.hmac_key.get_secret_value() for config in configs.values()}
    assert len(keys) == 1 and all(config.snapshots.signing for config in configs.values())


def test_compose_scale_instances_use_the_credentials_minio_accepts():
    compose = _compose(COMPOSE_SCALE)
    minio = _environment(compose["services"]["minio"])
    for name, service in _instances(compose).items():
        environment = _environment(service)
        assert environment["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert environment["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses to start with a shorter one


def test_compose_scale_instances_start_after_kafka_the_input_topic_and_the_bucket():
    for name, service in _instances(_compose(COMPOSE_SCALE)).items():
        assert service["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "create-topic": {"condition": "service_completed_successfully"},
            "create-bucket": {"condition": "service_completed_successfully"},
        }, name


def test_compose_scale_creates_the_input_topic_with_a_partition_for_each_instance(effective_config):
    compose = _compose(COMPOSE_SCALE)
    create = compose["services"]["create-topic"]
    assert create["image"] == compose["services"]["kafka"]["image"]
    assert create["depends_on"]["kafka"]["condition"] == "service_healthy"
    command = [*create["entrypoint"], *create["command"]]
    assert command[0] == "/opt/kafka/bin/kafka-topics.sh" and "--create" in command

    def option(name: str) -> str:
        return command[command.index(name) + 1]

    for name, config in _compose_instance_configs(effective_config).items():
        assert option("--bootstrap-server") == config.kafka.bootstrap_servers, name
        assert option("--topic") == config.kafka.input_topic, name
    assert int(option("--partitions")) >= len(_instances(compose))  # or an instance stays unready


def test_compose_scale_instances_answer_on_their_published_ports(effective_config):
    configs = _compose_instance_configs(effective_config)
    published = set()
    for name, service in _instances(_compose(COMPOSE_SCALE)).items():
        api = configs[name].api
        (mapping,) = service["ports"]
        host_port, container_port = (int(part) for part in mapping.split(":"))
        published.add(host_port)
        assert api.host == "0.0.0.0" and container_port == api.port, name
        check = HostCheck(api)
        assert check.allows(f"localhost:{host_port}", api.port), name  # curl from the machine
        assert check.allows(f"{name}:{api.port}", api.port), name  # another container
        assert not check.allows("attacker.example", api.port), name
        assert service["healthcheck"]["test"][-1].endswith(f"127.0.0.1:{api.port}/health')")
    assert len(published) == 2


# -- Kubernetes: docker/k8s --------------------------------------------------------------------


def test_k8s_files_parse_and_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert kustomization["namespace"] == NAMESPACE
    kinds = sorted(kind for kind, _ in _k8s_documents())
    assert kinds == ["ConfigMap", "Namespace", "Secret", "Service", "StatefulSet"]
    assert _one("Namespace")["metadata"]["name"] == NAMESPACE


def test_statefulset_takes_each_instance_id_from_its_pod_name(effective_config):
    statefulset = _one("StatefulSet")
    assert statefulset["spec"]["replicas"] == 2
    (variable,) = [v for v in _container()["env"] if v["name"] == "STREAM__SERVICE__INSTANCE_ID"]
    assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "--instance-id" not in _container()["args"]  # or it would override the variable
    configs = _pod_configs(effective_config)
    assert {pod: config.service.instance_id for pod, config in configs.items()} == {
        "stream-0": "stream-0",
        "stream-1": "stream-1",
    }
    pod_names = [f"{statefulset['metadata']['name']}-{ordinal}" for ordinal in range(2)]
    assert pod_names == sorted(POD_IPS)


def test_statefulset_is_governed_by_a_headless_service_selecting_its_pods():
    statefulset, service = _one("StatefulSet"), _one("Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container()["ports"]}


def test_probes_hit_health_and_ready_on_the_api_port_the_configmap_sets(effective_config):
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = _pod_configs(effective_config)["stream-0"]
    assert config.api.host == "0.0.0.0"  # the kubelet connects to the pod's address
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == config.api.port, probe
        assert path in ANY_HOST_PATHS  # the kubelet sends the pod's address as Host


def test_scrape_annotations_point_at_the_metrics_route_and_the_api_port(effective_config):
    annotations = _one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    config = _pod_configs(effective_config)["stream-0"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.api.port)
    assert annotations["prometheus.io/path"] == "/metrics"
    routes = {route.path for route in create_app(SimpleNamespace(config=config)).routes}  # type: ignore[arg-type]
    assert {"/metrics", "/health", "/ready"} <= routes


def test_probes_and_the_scrape_are_answered_with_the_pods_address_as_host(effective_config):
    """Prometheus scrapes ``<pod IP>:<port>``, which the API's Host check must let through."""
    for pod, config in _pod_configs(effective_config).items():
        url = f"http://{POD_IPS[pod]}:{config.api.port}"
        assert _get(config, url, "/health").status_code == 200, pod
        assert _get(config, url, "/ready").status_code == 503, pod  # answered: the stub is not ready
        metrics = _get(config, url, "/metrics")
        assert metrics.status_code == 200 and metrics.text.startswith("# HELP"), pod
        assert _get(config, f"http://{pod}.stream.{NAMESPACE}.svc:{config.api.port}", "/metrics").is_success
        assert _get(config, f"http://attacker.example:{config.api.port}", "/metrics").status_code == 421


def test_secret_holds_exactly_the_keys_the_statefulset_reads():
    references = {
        (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"]): v["name"]
        for v in _container()["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    secret = _one("Secret")
    data = _secret_data(secret["metadata"]["name"])
    assert {(secret["metadata"]["name"], key) for key in data} == set(references)
    assert sorted(references.values()) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "STREAM__SNAPSHOTS__HMAC_KEY",
    ]
    assert all(value.startswith("REPLACE-ME") for value in data.values())  # placeholders, marked


def test_configmap_config_validates_with_the_statefulset_environment(effective_config):
    configs = _pod_configs(effective_config)
    hmac_key = _secret_data("stream-s3")["hmac-key"]
    for pod, config in configs.items():
        assert str(config.snapshots.directory) == "s3://stream-snapshots/stream", pod
        assert config.snapshots.signing and config.snapshots.hmac_key is not None, pod
        assert config.snapshots.hmac_key.get_secret_value() == hmac_key, pod
        assert config.service.guarantee == "exactly_once", pod
        assert config.kafka.backend == "confluent-kafka", pod
    raw = yaml.safe_load(_configmap_config_text())
    assert "hmac_key" not in raw["snapshots"]  # the key is in the Secret, not the ConfigMap
    # No variable of the manifests was left unexpanded (a typo in $(NAME) would be).
    for pod in POD_IPS:
        assert not [value for value in _pod_environment(pod).values() if "$(" in value], pod


def test_statefulset_mounts_the_configmap_where_serve_reads_its_config():
    container = _container()
    args = container["args"]
    assert args[0] == "serve"
    config_path = Path(args[args.index("-c") + 1])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    volumes = {v["name"]: v for v in _one("StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    configmap = _one("ConfigMap")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]


def test_statefulset_grace_period_covers_the_shutdown_snapshot(effective_config):
    grace = _one("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    kafka = _pod_configs(effective_config)["stream-0"].kafka
    assert grace > 30  # Kubernetes' default
    # The last batch's commit, the shutdown snapshot's upload and the final commit, each bounded.
    assert grace >= 3 * kafka.request_timeout_seconds + kafka.transaction_timeout_seconds


def test_statefulset_sets_resources_and_runs_as_the_image_user():
    container = _container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    security = _one("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    (user,) = _dockerfile("USER")
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # instance locks


# -- the image ---------------------------------------------------------------------------------


def test_image_names_are_consistent():
    (compose_image,) = {service["image"] for service in _instances(_compose(COMPOSE_SCALE)).values()}
    assert _container()["image"] == compose_image
    name, _, tag = compose_image.rpartition(":")
    assert name == "stream" and tag
    both = (*_instances(_compose(COMPOSE_SCALE)).values(), *_instances(_compose(QUICK_START)).values())
    for service in both:  # the same build: the repository, with docker/Dockerfile
        assert (service["build"]["context"], service["build"]["dockerfile"]) == ("..", "docker/Dockerfile")
    assert (COMPOSE_SCALE.parent / "..").resolve() / "docker" / "Dockerfile" == DOCKERFILE


def test_image_sets_no_stream_variable_that_would_override_a_mounted_config():
    assert not [env for env in _dockerfile("ENV") if "STREAM__" in env]
    (cmd,) = _dockerfile("CMD")
    assert yaml.safe_load(cmd) == ["serve", "-c", "/etc/stream/config.yaml"]
    assert "docker/config.yaml /etc/stream/config.yaml" in _dockerfile("COPY")
    args = _container()["args"]
    assert args[args.index("-c") + 1] == "/etc/stream/config.yaml"


def test_image_default_config_keeps_snapshots_and_their_key_in_the_volume(effective_config):
    config = effective_config((DOCKER / "config.yaml").read_text(), {})
    (volume,) = (yaml.safe_load(line) for line in _dockerfile("VOLUME"))
    data = Path(volume[0])
    assert Path(config.snapshots.directory).is_relative_to(data)
    assert config.snapshots.resolved_key_file().is_relative_to(data)
    assert config.api.host == "0.0.0.0" and config.api.port == 8000
    quick_start = _compose(QUICK_START)
    (mount,) = quick_start["services"]["stream"]["volumes"]
    named, _, path = mount.partition(":")
    assert Path(path) == data and named in quick_start["volumes"]
    assert quick_start["services"]["stream"]["ports"] == [f"{config.api.port}:{config.api.port}"]
