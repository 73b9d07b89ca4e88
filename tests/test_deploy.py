"""The deploy step against a stand-in of the Kubernetes API on 127.0.0.1, through the real kubernetes client."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared import shared_path
from standins.kubernetes_api import KubeApiStandIn

from lulc_core.errors import InputError, UpstreamError
from serving.deploy import DeployError, DeploySpec, build_inference_service, deploy

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/lulc/inferenceservices"


@pytest.fixture
def kube_api() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(ready_after_polls=2) as api:
        yield api


def _client(api: KubeApiStandIn) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=api.url))


def _spec(**kw: object) -> DeploySpec:
    return DeploySpec.model_validate({"storage_uri": "s3://models/lulc/3", **kw})


def test_server_side_apply_creates_then_updates(kube_api: KubeApiStandIn) -> None:
    result = deploy(_spec(), api_client=_client(kube_api), timeout_s=5, poll_interval_s=0.01)
    assert result.action == "created"
    assert result.url == "http://lulc.lulc.example.com"
    assert result.generation == 1
    first = kube_api.requests[0]
    assert first["method"] == "PATCH" and first["path"] == f"{PATH}/lulc"
    assert first["content_type"] == "application/apply-patch+yaml"
    assert first["query"]["fieldManager"] == ["lulc-deploy"]
    assert first["query"]["force"] == ["true"]
    gets = [r for r in kube_api.requests if r["method"] == "GET"]
    assert len(gets) == 2  # polled until the controller said Ready

    result2 = deploy(
        _spec(storage_uri="s3://models/lulc/4"), api_client=_client(kube_api), timeout_s=5, poll_interval_s=0.01
    )
    assert result2.action == "updated"
    assert result2.generation == 2
    stored = kube_api.objects[("lulc", "inferenceservices", "lulc")]
    env = stored["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": "s3://models/lulc/4"} in env


def test_create_or_patch(kube_api: KubeApiStandIn) -> None:
    result = deploy(_spec(), api_client=_client(kube_api), timeout_s=5, poll_interval_s=0.01, server_side_apply=False)
    assert result.action == "created"
    assert kube_api.requests[0]["method"] == "POST" and kube_api.requests[0]["path"] == PATH
    result = deploy(
        _spec(max_replicas=8), api_client=_client(kube_api), timeout_s=5, poll_interval_s=0.01, server_side_apply=False
    )
    assert result.action == "updated"
    patch = next(r for r in kube_api.requests if r["method"] == "PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    stored = kube_api.objects[("lulc", "inferenceservices", "lulc")]
    assert stored["spec"]["predictor"]["maxReplicas"] == 8


def test_timeout_names_the_condition() -> None:
    with KubeApiStandIn(never_ready=True) as api:
        started = time.monotonic()
        with pytest.raises(DeployError, match=r"not Ready after 0.3 s .*RevisionMissing"):
            deploy(_spec(), api_client=_client(api), timeout_s=0.3, poll_interval_s=0.05)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("verb", ["patch", "get"])
def test_forbidden_is_a_clear_error(kube_api: KubeApiStandIn, verb: str) -> None:
    kube_api.forbidden_verbs.add(verb)
    with pytest.raises(DeployError, match=r"forbidden to (apply|get) .*lulc-deployer") as info:
        deploy(_spec(), api_client=_client(kube_api), timeout_s=1, poll_interval_s=0.01)
    assert "cannot" in str(info.value)  # the server's own message is kept


def test_server_errors_are_upstream_errors(kube_api: KubeApiStandIn) -> None:
    kube_api.fail_next = [500]
    with pytest.raises(UpstreamError, match="kubernetes"):
        deploy(_spec(), api_client=_client(kube_api), timeout_s=1, poll_interval_s=0.01)


def test_bad_spec_names_the_field() -> None:
    with pytest.raises(InputError, match="max_replicas"):
        deploy({"storage_uri": "s3://m", "min_replicas": 3, "max_replicas": 1}, api_client=object())
    with pytest.raises(InputError, match=r"deploy\.name"):
        deploy({"storage_uri": "s3://m", "name": "Bad_Name"}, api_client=object())


@pytest.mark.parametrize(
    "kw", [{}, {"gpus": 1, "node_selector": {"gpu": "a100"}}, {"deployment_mode": "RawDeployment"}]
)
def test_built_object_validates_against_the_crd(kw: dict[str, object]) -> None:
    schema = shared_path("schemas", "jsonschema", "serving.kserve.io", "inferenceservice_v1beta1.json")
    validator = jsonschema.Draft202012Validator(json.loads(schema.read_text()))
    obj = build_inference_service(_spec(**kw))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]
    assert errors == []
    container = obj["spec"]["predictor"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "lulc"
    if kw.get("gpus"):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert obj["spec"]["predictor"]["tolerations"][0]["key"] == "nvidia.com/gpu"
