"""The Kubernetes manifests: every overlay builds with `kubectl kustomize`; every core resource
validates against Kubernetes 1.37's schemas (kubernetes-validate, strict); ServiceMonitor, PodMonitor
and PrometheusRule validate against prometheus-operator 0.93.0's CRD schemas (tests/deploy/schemas);
and the containers keep the security settings the deployment promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent.name for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
CRDS = Path(__file__).with_name("schemas") / "prometheus-operator-v0.93.0"
KUBERNETES_VERSION = "1.37.0"


def build(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: the README's test command installs it"
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def crd_schemas() -> dict[str, dict]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def test_there_are_sidecar_node_and_monitoring_overlays():
    assert {"sidecar", "node", "monitoring"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates(overlay):
    schemas = crd_schemas()
    docs = build(overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # OpenAPI v3 schemas are Draft 4 JSON Schema; the CRDs' Go regexes are not checked as patterns
            jsonschema.Draft4Validator(schemas[doc["kind"]]).validate(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def containers(docs: list[dict], name: str = "jouletrace") -> list[dict]:
    return [c for d in docs if d["kind"] in ("Deployment", "DaemonSet")
            for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == name]


@pytest.mark.parametrize("overlay", ["sidecar", "node"])
def test_jouletrace_runs_least_privileged_with_probes_and_limits(overlay):
    docs = build(overlay)
    (c,) = containers(docs)
    sc = c["securityContext"]
    if overlay == "sidecar":
        assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001
    else:  # root, owner of the kubelet's PodResources socket, with no capability (as dcgm-exporter runs)
        assert sc["runAsUser"] == 0 and not sc["runAsNonRoot"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert not sc.get("privileged") and sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    for mount in c.get("volumeMounts", []):
        assert mount["readOnly"], mount


def test_the_sidecar_keeps_otlp_on_localhost_and_vllm_sends_there():
    docs = build("sidecar")
    (c,) = containers(docs)
    assert not any(a.startswith(("--otlp-grpc-addr", "--otlp-http-addr")) for a in c["args"])  # 127.0.0.1 defaults
    assert {p["containerPort"] for p in c["ports"]} == {9464}
    (vllm,) = containers(docs, "vllm")
    assert "--otlp-traces-endpoint=http://127.0.0.1:4317" in vllm["args"]
    assert any(e["name"] == "OTEL_SERVICE_NAME" for e in vllm["env"])
    assert_names_its_pod(vllm)


def test_the_sidecar_samples_the_gpus_its_server_lists_without_host_access():
    docs = build("sidecar")
    (c,) = containers(docs)
    (vllm,) = containers(docs, "vllm")
    (path,) = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--gpus-file=")]
    assert not any(a.startswith(("--pod=", "--gpus=")) for a in c["args"])
    script = vllm["command"][2]
    assert script.startswith(f"nvidia-smi --query-gpu=uuid --format=csv,noheader > {path}.tmp")
    assert f"mv {path}.tmp {path};" in script and 'exec vllm serve "$@"' in script  # whole, then renamed
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("hostPath" not in v for v in volumes.values())
    mounts = {name: {m["name"]: m for m in container.get("volumeMounts", [])} for name, container in
              (("jouletrace", c), ("vllm", vllm))}
    (shared,) = set(mounts["jouletrace"]) & set(mounts["vllm"])
    assert "emptyDir" in volumes[shared]
    assert mounts["jouletrace"][shared]["mountPath"] == mounts["vllm"][shared]["mountPath"] == str(Path(path).parent)
    assert mounts["jouletrace"][shared]["readOnly"] and not mounts["vllm"][shared].get("readOnly")


def test_the_vllm_image_carries_opentelemetry():
    """vLLM requires opentelemetry-sdk and -exporter-otlp from 0.17.0 on (its wheels' metadata); the
    images before lack them and exit at start with --otlp-traces-endpoint."""
    (vllm,) = containers(build("sidecar"), "vllm")
    version = re.fullmatch(r"vllm/vllm-openai:v(\d+)\.(\d+)\.(\d+)", vllm["image"])
    assert version and tuple(map(int, version.groups())) >= (0, 17, 0), vllm["image"]


@pytest.mark.parametrize("overlay", ["sidecar", "node"])
def test_the_overlays_namespace_is_created(overlay):
    docs = build(overlay)
    (namespace,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}


def test_every_exporter_is_scraped_once():
    """The PodMonitor takes the sidecars' pods, the ServiceMonitor the node DaemonSet's Service: a
    pod both select would count its GPUs twice (JouletraceGPUMeasuredTwice)."""
    monitors = {d["kind"]: d["spec"]["selector"]["matchLabels"] for d in build("monitoring")
                if d["kind"] in ("PodMonitor", "ServiceMonitor")}
    pods = {overlay: d["spec"]["template"]["metadata"]["labels"] for overlay in ("sidecar", "node")
            for d in build(overlay) if d["kind"] in ("Deployment", "DaemonSet")}
    (service,) = [d for d in build("node") if d["kind"] == "Service" and d["spec"].get("ports")
                  and any(p["name"] == "metrics" for p in d["spec"]["ports"])]
    selects = lambda selector, labels: selector.items() <= labels.items()  # noqa: E731
    assert selects(monitors["PodMonitor"], pods["sidecar"]) and not selects(monitors["PodMonitor"], pods["node"])
    assert selects(monitors["ServiceMonitor"], service["metadata"]["labels"])
    assert selects(service["spec"]["selector"], pods["node"])


def test_the_monitors_and_rules_carry_the_operators_release_label():
    docs = build("monitoring")
    releases = {d["kind"]: d["metadata"]["labels"].get("release") for d in docs}
    assert releases["PodMonitor"] == releases["ServiceMonitor"] == releases["PrometheusRule"] == "kube-prometheus-stack"


def assert_names_its_pod(server: dict) -> None:
    """The server's spans carry its pod: OTEL_RESOURCE_ATTRIBUTES from the downward API, defined after
    the variables it expands (Kubernetes expands $(VAR) from earlier entries only)."""
    names = [e["name"] for e in server["env"]]
    attrs = next(e["value"] for e in server["env"] if e["name"] == "OTEL_RESOURCE_ATTRIBUTES")
    assert dict(kv.split("=") for kv in attrs.split(",")) == {"k8s.namespace.name": "$(POD_NAMESPACE)",
                                                              "k8s.pod.name": "$(POD_NAME)"}
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in server["env"] if "valueFrom" in e}
    assert fields["POD_NAME"] == "metadata.name" and fields["POD_NAMESPACE"] == "metadata.namespace"
    assert names.index("OTEL_RESOURCE_ATTRIBUTES") > max(names.index("POD_NAME"), names.index("POD_NAMESPACE"))


def test_the_node_daemonset_places_requests_by_pod_and_reads_podresources():
    (c,) = containers(build("node"))
    assert "--node-mode=on" in c["args"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/var/lib/kubelet/pod-resources"}


def test_the_readme_snippet_for_node_mode_servers_is_what_the_sidecar_uses():
    text = (ROOT / "k8s" / "README.md").read_text()
    snippet = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert_names_its_pod(snippet)


def test_the_monitoring_overlay_carries_the_generated_rules_and_dashboards():
    monitoring = ROOT / "k8s" / "overlays" / "monitoring"
    for copy, source in (("prometheusrule.yaml", "prometheus/prometheusrule.yaml"),
                         ("grafana-dashboards.yaml", "grafana/configmap.yaml")):
        assert (monitoring / copy).read_text() == (ROOT / source).read_text(), f"{copy} is stale: `make manifests`"
    kinds = {d["kind"] for d in build("monitoring")}
    assert kinds == {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_the_rules_in_the_resource_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the README's test command installs Debian's prometheus"
    (rule,) = [d for d in build("monitoring") if d["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
