"""The kustomize manifests: rendered per overlay with a real kustomize, validated against the real schemas."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from shared import shared_path

from lulc_core.config import load_run_config
from serving.deploy import DeploySpec, build_inference_service

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = ["cpu", "gpu", "raw-deployment"]
K8S_VERSION = "1.30"
SECRETISH = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIAL)", re.I)


def _kustomize_cmd() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("neither kustomize nor kubectl is installed (Debian: kubectl) — cannot render the overlays")


@cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [*_kustomize_cmd(), str(MANIFESTS / target)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def _isvc(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


def _validator(doc: dict[str, Any]) -> jsonschema.Draft202012Validator | None:
    group, _, version = doc["apiVersion"].rpartition("/")
    path = shared_path("schemas", "jsonschema") / group / f"{doc['kind'].lower()}_{version}.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text())) if group and path.is_file() else None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_crd_and_core_schemas(overlay: str) -> None:
    shared_path("schemas", "jsonschema")
    docs = _render(f"overlays/{overlay}")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "InferenceService", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    )
    for doc in docs:
        validator = _validator(doc)
        if validator is not None:
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert errors == [], f"{doc['kind']} {doc['metadata']['name']}"
        else:
            assert doc["kind"] != "InferenceService"
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_typo_is_caught() -> None:
    isvc = json.loads(json.dumps(_isvc(_render("overlays/cpu"))))
    isvc["spec"]["predictor"]["minReplica"] = 1
    validator = _validator(isvc)
    assert validator is not None
    assert any("minReplica" in e.message for e in validator.iter_errors(isvc))
    role = next(d for d in _render("overlays/cpu") if d["kind"] == "Role")
    bad = json.loads(json.dumps(role)) | {"rule": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_and_labels(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("name", "instance", "part-of", "version", "managed-by", "component"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)
        assert doc["kind"] != "Secret", "secrets are referenced, never shipped"
        assert doc["metadata"]["namespace"] == "lulc"
    predictor = _isvc(docs)["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["runAsUser"] > 0
    assert predictor["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = predictor["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not container["image"].endswith(":latest") and ":" in container["image"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/lulc"
    assert container["livenessProbe"]["httpGet"]["port"] == 8080
    for env in container["env"]:
        if SECRETISH.search(env["name"]):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} <= set(predictor)
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchExpressions"] == [
        {"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}
    ]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_overlays_differ_as_intended() -> None:
    cpu, gpu, raw = (_isvc(_render(f"overlays/{o}")) for o in OVERLAYS)
    assert "nvidia.com/gpu" not in cpu["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    gpu_pred = gpu["spec"]["predictor"]
    assert gpu_pred["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_pred["containers"][0]["image"].endswith("-cuda")
    assert cpu["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert raw["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert raw["spec"]["predictor"]["scaleMetric"] == "cpu"
    assert raw["spec"]["predictor"]["minReplicas"] >= 2


def test_base_matches_the_deploy_step() -> None:
    base = _isvc(_render("base"))
    env = base["spec"]["predictor"]["containers"][0]["env"]
    uri = next(e["value"] for e in env if e["name"] == "STORAGE_URI")
    built = build_inference_service(DeploySpec(storage_uri=uri))
    assert base["spec"] == built["spec"]
    assert base["metadata"]["annotations"] == built["metadata"]["annotations"]


def test_rbac_lets_the_deploy_step_apply_and_poll() -> None:
    docs = _render("base")
    role = next(d for d in docs if d["kind"] == "Role")
    verbs = {v for r in role["rules"] if "inferenceservices" in r["resources"] for v in r["verbs"]}
    assert {"get", "create", "patch"} <= verbs
    assert "delete" not in verbs and "*" not in verbs
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "lulc-pipeline", "namespace": "lulc"}


def test_serving_config_is_a_valid_run_config(tmp_path: Path) -> None:
    cm = next(d for d in _render("base") if d["kind"] == "ConfigMap")
    path = tmp_path / "run.yaml"
    path.write_text(cm["data"]["run.yaml"])
    cfg = load_run_config(path)
    assert cfg.imagery.store == "sentinelhub"
    keys = _keys(yaml.safe_load(cm["data"]["run.yaml"]))
    assert "token_url" in keys
    assert [k for k in keys if SECRETISH.search(k) and k != "token_url"] == []


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for k, v in node.items() for k in (k, *_keys(v))]
    if isinstance(node, list):
        return [k for v in node for k in _keys(v)]
    return []


def test_gpu_overlay_serves_in_mixed_precision_with_larger_batches(tmp_path: Path) -> None:
    configs = {}
    for overlay in ("cpu", "gpu"):
        cm = next(d for d in _render(f"overlays/{overlay}") if d["kind"] == "ConfigMap")
        (tmp_path / f"{overlay}.yaml").write_text(cm["data"]["run.yaml"])
        configs[overlay] = load_run_config(tmp_path / f"{overlay}.yaml")
    assert (configs["cpu"].serving.precision, configs["gpu"].serving.precision) == ("fp32", "bf16")
    assert configs["gpu"].serving.batch_size > configs["cpu"].serving.batch_size
    # apart from the serving section the GPU configuration is the base one
    assert configs["gpu"].model_dump(exclude={"serving"}) == configs["cpu"].model_dump(exclude={"serving"})
