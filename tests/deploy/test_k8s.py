"""The Kubernetes manifests in deploy/k8s: valid for a pinned Kubernetes version, and true to the service.

Schema validation uses kubernetes-validate (offline, strict: unknown fields are errors); the rest reads the
YAML and the service's own code: the settings the env variables name, the routes the probes call, the
command lines, the GPU requests, the worker's shutdown time and the Secrets' contents.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"  # the release whose API schemas the manifests are checked against
ENV_PREFIX = "FWDPRUNE_"
LABELS = {"app.kubernetes.io/name": "fwdprune", "app.kubernetes.io/part-of": "fwdprune"}
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job")
GPU = "nvidia.com/gpu"
PLACEHOLDER = "REPLACE-ME"

# Environment variables that are neither Settings fields nor boto3's: each with the library that reads it.
THIRD_PARTY_ENV = {"HF_HOME": "huggingface_hub: its home (hub cache, token, xet chunk cache)"}
# The names boto3 (botocore) reads from the environment (its configuration guide), beyond which a
# botocore that is installed is asked for its own list.
BOTO3_ENV = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
}


# loading ---------------------------------------------------------------------------------------------------
def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.is_file())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomization() -> dict[str, Any]:
    return _documents(K8S / "kustomization.yaml")[0]


def _applied() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/k8s` creates (before kustomize sets namespace and images)."""
    return [doc for name in _kustomization()["resources"] for doc in _documents(K8S / name)]


def _all_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in the folder, applied or example, with its file relative to it."""
    return [
        (str(path.relative_to(K8S)), doc)
        for path in _yaml_files()
        if path.name != "kustomization.yaml"
        for doc in _documents(path)
    ]


def _one(kind: str, component: str) -> dict[str, Any]:
    found = [
        doc
        for doc in _applied()
        if doc["kind"] == kind and doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, (kind, component, len(found))
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _workloads() -> list[dict[str, Any]]:
    return [doc for doc in _applied() if doc["kind"] in WORKLOADS]


def _config_maps() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc.get("data", {}) for doc in _applied() if doc["kind"] == "ConfigMap"}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: ConfigMap values (envFrom) overridden by `env` (a value or a valueFrom)."""
    maps = _config_maps()
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "envFrom takes ConfigMaps only: a Secret's keys are named one by one"
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _env_names() -> list[str]:
    names = {name for doc in _workloads() for c in _containers(_pod_spec(doc)) for name in _env(c)}
    return sorted(names | {name for data in _config_maps().values() for name in data})


# schema ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,doc",
    _all_objects(),
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in _all_objects()],
)
def test_manifest_matches_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError as err:
        pytest.skip(f"kubernetes-validate is not installed (pip install kubernetes-validate): {err}")
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(part) for part in err.path)
        pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {err.message}")


def test_kustomization_lists_every_manifest() -> None:
    """Every resource it names exists, and every manifest beside it (examples/ aside) is one of them."""
    kustomization = _kustomization()
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "fwdprune"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert all((K8S / name).is_file() for name in listed), listed
    beside = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == beside
    keys = [(doc["kind"], doc["metadata"]["name"]) for doc in _applied()]
    assert len(keys) == len(set(keys)), keys
    kinds = {kind for kind, _ in keys}
    assert {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert "DaemonSet" in kinds or "Deployment" in kinds
    assert "Secret" not in kinds, "Secrets are made out of band; the folder holds only examples"
    for doc in _applied():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace", "fwdprune") == "fwdprune", doc["metadata"]


def test_images_are_kustomize_entries() -> None:
    names = {entry["name"] for entry in _kustomization()["images"]}
    for entry in _kustomization()["images"]:
        assert entry.get("newName") and entry.get("newTag"), entry
    used = {c["image"] for doc in _workloads() for c in _containers(_pod_spec(doc))}
    assert used == names == {"fwdprune-api", "fwdprune-worker"}


def test_kustomize_build() -> None:
    """What `kubectl apply -k` applies: the listed objects, in the namespace, with the registry's images."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot render the kustomization")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _applied()
    )
    images = {f"{e['newName']}:{e['newTag']}" for e in _kustomization()["images"]}
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "fwdprune"
        if doc["kind"] in WORKLOADS:
            assert {c["image"] for c in _containers(_pod_spec(doc))} <= images


# labels and selectors --------------------------------------------------------------------------------------
def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_labels_and_selectors() -> None:
    for _, obj in _all_objects():
        labels = obj["metadata"].get("labels", {})
        assert _matches(LABELS, labels) and labels.get("app.kubernetes.io/component"), obj["metadata"]
    pods: dict[str, dict[str, str]] = {}
    for doc in _workloads():
        template = doc["spec"]["template"]["metadata"]["labels"]
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        assert template == doc["metadata"]["labels"], doc["metadata"]["name"]
        pods[component] = template
        if doc["kind"] != "Job":  # a Job's selector is generated
            selector = doc["spec"]["selector"]["matchLabels"]
            assert _matches(selector, template), doc["metadata"]["name"]
            others = [
                d["spec"]["template"]["metadata"]["labels"]
                for d in _workloads()
                if d["metadata"]["name"] != doc["metadata"]["name"]
            ]
            assert not any(_matches(selector, t) for t in others), f"{doc['metadata']['name']} selects others"
    assert set(pods) == {"api", "worker", "migrate"}
    # the Service and the PodDisruptionBudget select the API's pods, and only those
    service, pdb = _one("Service", "api"), _one("PodDisruptionBudget", "api")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert [c for c, labels in pods.items() if _matches(selector, labels)] == ["api"]
    api = _one("Deployment", "api")
    assert pdb["spec"]["minAvailable"] < api["spec"]["replicas"]
    ports = {p["name"]: p["containerPort"] for c in _pod_spec(api)["containers"] for p in c.get("ports", [])}
    assert all(
        p["targetPort"] in ports or p["targetPort"] in ports.values() for p in service["spec"]["ports"]
    )


# the API, the workers, the migration -----------------------------------------------------------------------
def _requests_gpu(container: dict[str, Any]) -> bool:
    resources = container.get("resources", {})
    return GPU in resources.get("limits", {}) or GPU in resources.get("requests", {})


def test_api_runs_without_worker_or_gpu() -> None:
    api = _one("Deployment", "api")
    assert api["spec"]["replicas"] >= 2
    pod = _pod_spec(api)
    for container in _containers(pod):
        assert container["image"] == "fwdprune-api"
        assert container["args"] == ["serve", "--no-worker"] and "command" not in container
        assert not _requests_gpu(container)
        env = _env(container)
        assert env["FWDPRUNE_EMBEDDED_WORKER"] == "false"
        assert env["FWDPRUNE_CHECK_MODELS_ON_SUBMIT"] == "false"  # the API holds no models
        # the API keys file is where the setting says, from a Secret volume
        keys_file = Path(env["FWDPRUNE_API_KEYS_FILE"])
        mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "secret" in volume and mount.get("readOnly") is True
        assert keys_file.name in {item["path"] for item in volume["secret"].get("items", [])}
    assert GPU not in str(pod.get("nodeSelector", {})) and not pod.get("tolerations")


def test_workers_claim_gpus() -> None:
    worker = next(
        doc for doc in _workloads() if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    )
    assert worker["kind"] in ("DaemonSet", "Deployment")
    pod = _pod_spec(worker)
    assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in pod["tolerations"])
    assert pod.get("nodeSelector") or pod.get("affinity"), "workers belong on GPU nodes"
    (container,) = pod["containers"]
    assert container["image"] == "fwdprune-worker" and container["args"] == ["worker"]
    assert int(container["resources"]["limits"][GPU]) >= 1
    env = _env(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["FWDPRUNE_MODELS_DIR"]].get("readOnly") is True
    hf_cache = Path(env["FWDPRUNE_HF_CACHE_DIR"])
    assert any(hf_cache == Path(p) or Path(p) in hf_cache.parents for p in mounts)
    # a worker runs user-chosen models and data: it gets none of the API's keys
    assert not {"FWDPRUNE_API_KEYS", "FWDPRUNE_API_KEYS_FILE", "FWDPRUNE_ADMIN_KEYS"} & set(env)
    assert "fwdprune-api-keys" not in str(pod)


def test_migration_job() -> None:
    job = _one("Job", "migrate")
    pod = _pod_spec(job)
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    assert container["image"] == "fwdprune-api" and container["args"] == ["migrate"]
    assert not _requests_gpu(container)
    assert "secretKeyRef" in _env(container)["FWDPRUNE_DATABASE_URL"]


def test_every_container_is_hardened_and_sized() -> None:
    for doc in _workloads():
        pod = _pod_spec(doc)
        assert pod["automountServiceAccountToken"] is False
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in _containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and not context.get("privileged")
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(requests) and "memory" in limits, container["name"]
            # a read-only root needs a writable /tmp
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


# the service's own code ------------------------------------------------------------------------------------
def _health_routes() -> set[str]:
    """The paths service/routers/health.py serves: its `@router.get("...")` decorators."""
    tree = ast.parse((REPO / "service" / "routers" / "health.py").read_text(encoding="utf-8"))
    return {
        str(decorator.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr == "get"
        and decorator.args
        and isinstance(decorator.args[0], ast.Constant)
    }


def _probes() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    for doc in _workloads():
        for container in _containers(_pod_spec(doc)):
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in container:
                    yield doc["metadata"]["name"], kind, container[kind], container


def test_probes_call_health_routes() -> None:
    routes = _health_routes()
    assert {"/healthz", "/readyz"} <= routes
    probes = list(_probes())
    assert {kind for _, kind, _, _ in probes} >= {"livenessProbe", "readinessProbe"}
    for name, kind, probe, container in probes:
        get = probe["httpGet"]
        assert get["path"] in routes, (name, kind, get["path"])
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert get["port"] in ports or get["port"] in ports.values(), (name, kind)
        # /readyz is 503 whenever no worker heartbeats: it must neither restart nor unlist the API
        assert get["path"] != "/readyz", (name, kind)


def _boto3_env() -> set[str]:
    names = set(BOTO3_ENV)
    try:
        from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
    except ImportError:
        return names
    for _config, env, *_rest in BOTOCORE_DEFAUT_SESSION_VARIABLES.values():
        names.update([env] if isinstance(env, str) else env or [])
    return names


def _read_by_service(name: str) -> bool:
    """Whether the service's code names the variable itself (an `os.environ` read of its own)."""
    return any(f'"{name}"' in p.read_text(encoding="utf-8") for p in (REPO / "service").rglob("*.py"))


@pytest.mark.parametrize("name", _env_names())
def test_env_variable_is_read_by_the_service(name: str) -> None:
    """Each variable is a Settings field (FWDPRUNE_ + field), a boto3 setting or a named library's."""
    fields = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    known = name in fields or name in _boto3_env() or name in THIRD_PARTY_ENV or _read_by_service(name)
    assert known, f"{name}: no Settings field, boto3 setting or known library reads it"
    if name.startswith(ENV_PREFIX):
        assert name in fields


def _retry_wait_s(settings: Settings) -> float:
    """The longest a worker's store call waits between its tries (service/worker.py: 0.1 s, doubling)."""
    waits = (
        min(0.1 * 2**i, settings.store_retry_max_wait_s) for i in range(settings.store_retry_attempts - 1)
    )
    return sum(waits)


def test_worker_outlives_its_shutdown() -> None:
    """The kubelet's SIGKILL comes after the worker has stopped its jobs and requeued them."""
    worker = next(
        doc for doc in _workloads() if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    )
    pod = _pod_spec(worker)
    (container,) = pod["containers"]
    env = {name: value for name, value in _env(container).items() if isinstance(value, str)}
    fields = {ENV_PREFIX + field.upper(): field for field in Settings.model_fields}
    settings = Settings.model_validate({fields[n]: v for n, v in env.items() if n in fields})
    assert "FWDPRUNE_CANCEL_GRACE_S" in env, "the worker's cancel grace is set beside its termination grace"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > settings.cancel_grace_s
    # SIGTERM → the tick in flight ends (a store call, retried), the jobs get their grace, each is requeued
    # (a retried store call): room for both retry waits on top of the grace
    assert grace > settings.cancel_grace_s + 2 * _retry_wait_s(settings), grace


# secrets ---------------------------------------------------------------------------------------------------
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "URL with a password": re.compile(r"://[^/\s:@]+:(?!REPLACE-ME|[A-Z_]+@)[^@\s/]+@"),
}
TOKEN = re.compile(r"[A-Za-z0-9+_=-]{24,}")  # a key or a password: long, letters and digits mixed


def _looks_random(word: str) -> bool:
    return bool(re.search(r"[0-9]", word) and re.search(r"[A-Za-z]", word)) and PLACEHOLDER not in word


def _secrets() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _all_objects() if doc["kind"] == "Secret"]


def test_secrets_are_placeholders() -> None:
    secrets = _secrets()
    assert secrets, "an example Secret documents the keys the manifests read"
    for name, doc in secrets:
        assert name.startswith("examples/") and "EXAMPLE" in (K8S / name).read_text(encoding="utf-8")
        assert "data" not in doc, f"{name}: base64 `data` hides what it holds; use stringData placeholders"
        for key, value in doc["stringData"].items():
            lines = [line for line in value.splitlines() if line.strip() and not line.startswith("#")]
            assert lines and all(PLACEHOLDER in line for line in lines), f"{name}: {key} is not a placeholder"


def test_no_credentials_in_the_folder() -> None:
    for path in sorted(p for p in K8S.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        for what, pattern in CREDENTIAL_PATTERNS.items():
            found = [m.group(0) for m in pattern.finditer(text)]
            assert not found, f"{path.relative_to(REPO)}: looks like a {what}: {found}"
        tokens = [word for word in TOKEN.findall(text) if _looks_random(word)]
        assert not tokens, f"{path.relative_to(REPO)}: looks like a key or password: {tokens}"


def test_secret_references_are_documented() -> None:
    """Every Secret key a pod reads is in the example Secrets; every ConfigMap it reads is applied."""
    example = {(doc["metadata"]["name"], key) for _, doc in _secrets() for key in doc["stringData"]}
    required: set[tuple[str, str]] = set()
    for doc in _workloads():
        pod = _pod_spec(doc)
        for container in _containers(pod):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in example, f"{ref} is read but not in the example"
                    if not ref.get("optional", False):
                        required.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in _config_maps()
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    assert (volume["secret"]["secretName"], item["key"]) in example
                    required.add((volume["secret"]["secretName"], item["key"]))
    assert required == {("fwdprune-store", "database-url"), ("fwdprune-api-keys", "api_keys")}


# network and disks of the workers, where jobs run user-chosen models and data -------------------------------
METADATA_ENDPOINT = ipaddress.ip_address("169.254.169.254")  # the clouds' instance metadata service


def _worker_egress() -> dict[str, Any]:
    (policy,) = [
        doc
        for doc in _applied()
        if doc["kind"] == "NetworkPolicy" and "Egress" in doc["spec"].get("policyTypes", [])
    ]
    return policy


def test_workers_reach_only_dns_the_database_and_the_object_storage() -> None:
    policy = _worker_egress()
    worker = _one("DaemonSet", "worker")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert _matches(selector, worker["spec"]["template"]["metadata"]["labels"])
    assert not _matches(selector, _one("Deployment", "api")["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    for rule in rules:  # a rule without `to` or `ports` would allow every address or every port
        assert rule.get("to") and rule.get("ports"), rule
        for peer in rule["to"]:
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert network.prefixlen > 0 and METADATA_ENDPOINT not in network, peer
    ports = [{(p["port"], p["protocol"]) for p in rule["ports"]} for rule in rules]
    assert ports == [{(53, "UDP"), (53, "TCP")}, {(5432, "TCP")}, {(443, "TCP")}]
    (dns,) = rules[0]["to"]
    assert dns["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    # the ports are the ones the workers' settings name
    example = {doc["metadata"]["name"]: doc["stringData"] for _, doc in _secrets()}
    assert ":5432/" in example["fwdprune-store"]["database-url"]
    assert _config_maps()["fwdprune-config"]["AWS_ENDPOINT_URL"].startswith("https://")


def test_no_pod_writes_to_a_host_directory() -> None:
    """Every hostPath (the models, the Hub cache) is mounted read-only: a job cannot change a model that
    another job, on this node, will load."""
    for doc in _workloads():
        pod = _pod_spec(doc)
        host_paths = {v["name"] for v in pod.get("volumes", []) if "hostPath" in v}
        for container in _containers(pod):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in host_paths:
                    assert mount.get("readOnly") is True, (doc["metadata"]["name"], mount)
    (container,) = _pod_spec(_one("DaemonSet", "worker"))["containers"]
    env = _env(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["FWDPRUNE_HF_CACHE_DIR"]].get("readOnly") is True
    assert env["FWDPRUNE_ALLOW_MODEL_DOWNLOAD"] == "false"  # a download would need a writable cache


def _secret_key(container: dict[str, Any], name: str) -> str:
    return str(_env(container)[name]["secretKeyRef"]["key"])


def test_api_and_workers_have_object_storage_users_of_their_own() -> None:
    """Each with the policy the compose setup gives its MinIO user, under the configured prefix."""
    (api,) = _pod_spec(_one("Deployment", "api"))["containers"]
    (worker,) = _pod_spec(_one("DaemonSet", "worker"))["containers"]
    for role, container in (("api", api), ("worker", worker)):
        assert _secret_key(container, "AWS_ACCESS_KEY_ID") == f"{role}-aws-access-key-id"
        assert _secret_key(container, "AWS_SECRET_ACCESS_KEY") == f"{role}-aws-secret-access-key"
    bucket, prefix = Settings(
        storage_url=_config_maps()["fwdprune-config"]["FWDPRUNE_STORAGE_URL"]
    ).s3_location  # type: ignore[misc]
    for role in ("api", "worker"):
        compose = (REPO / "docker" / "minio-policies" / f"{role}.json").read_text(encoding="utf-8")
        expected = compose.replace(f"arn:aws:s3:::{bucket}/", f"arn:aws:s3:::{bucket}/{prefix}/").replace(
            '"jobs/*"', f'"{prefix}/jobs/*"'
        )
        example = (K8S / "examples" / f"{role}-policy.example.json").read_text(encoding="utf-8")
        assert json.loads(example) == json.loads(expected), role
