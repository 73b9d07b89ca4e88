"""Submit the compiled pipeline to a Kubeflow Pipelines cluster with `kfp.Client`, and wait for it.

Authentication: a bearer token from env `KFP_TOKEN` (e.g. `kubectl create token <service account>` or the
`authservice_session` of a Kubeflow login), passed as `existing_token`. Before the kfp.Client is built, one
healthz request checks the host and the token, so a wrong host or token fails at once with a clear error (the
client itself would retry healthz five times, 5 s apart).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from lulc_core.errors import InputError, LulcError, NotFoundError, UpstreamError

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"
HEALTHZ_TIMEOUT_S = 10.0
T = TypeVar("T")


class RunFailedError(LulcError):
    """The pipeline run finished in a state other than SUCCEEDED."""


class SubmitResult(BaseModel):
    """A submitted run."""

    run_id: str
    experiment_id: str
    url: str = Field(description="The run in the KFP UI.")
    state: str | None = Field(default=None, description="Final state when waited for (SUCCEEDED, FAILED, ...).")
    pipeline_id: str | None = Field(default=None, description="Uploaded pipeline (with --upload).")


def _explain(exc: BaseException, host: str) -> LulcError:
    """A clear lulc error for a kfp_server_api / urllib3 failure."""
    import kfp_server_api
    import urllib3

    if isinstance(exc, kfp_server_api.ApiException):
        status = int(exc.status or 0)
        detail = _server_message(exc)
        if status in (401, 403):
            word = "Unauthorized" if status == 401 else "Forbidden"
            return InputError(
                TOKEN_ENV,
                f"the KFP API at {host} answered {status} {word}: {detail}",
                f"export {TOKEN_ENV}=<bearer token allowed to use Kubeflow Pipelines> "
                "(e.g. `kubectl -n kubeflow create token <service account>`)",
            )
        if status == 400:
            return InputError("pipeline", f"the KFP API at {host} rejected the request: {detail}")
        if status == 404:
            return NotFoundError(f"KFP API at {host}: {detail} (HTTP 404) — is this the Kubeflow Pipelines API URL?")
        return UpstreamError("kfp", f"{host} answered HTTP {status}: {detail}", status_code=502)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        return UpstreamError(
            "kfp",
            f"cannot reach the KFP API at {host} ({reason}) — check --host (e.g. http://127.0.0.1:8888 after "
            "`kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888`)",
            status_code=503,
        )
    return UpstreamError("kfp", f"{host}: {exc}")


def _server_message(exc: Any) -> str:
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return str(parsed.get("message") or parsed.get("error") or body)[:500]
    except ValueError:
        pass
    return (body or str(exc.reason or "no message"))[:500]


@contextmanager
def _kfp_errors(host: str) -> Iterator[None]:
    import kfp_server_api
    import urllib3

    try:
        yield
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
        raise _explain(exc, host) from exc


def call_kfp(host: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call a kfp.Client / kfp_server_api function; its failures become clear lulc errors."""
    with _kfp_errors(host):
        return fn(*args, **kwargs)


def check_host(host: str) -> str:
    """Normalise and validate a KFP API URL."""
    h = host.strip().rstrip("/")
    if not h.startswith(("http://", "https://")):
        raise InputError("--host", f"{host!r} is not an http(s) URL", "e.g. --host http://127.0.0.1:8888")
    return h


def make_client(host: str, token: str | None = None, namespace: str | None = None) -> Any:
    """A `kfp.Client` for `host`, after one healthz request has checked reachability and the token."""
    import kfp
    import kfp_server_api

    host = check_host(host)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    conf = kfp_server_api.Configuration(host=host)
    if token:
        conf.api_key["authorization"] = token
        conf.api_key_prefix["authorization"] = "Bearer"
    api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(conf))
    health = call_kfp(host, api.healthz_service_get_healthz, _request_timeout=HEALTHZ_TIMEOUT_S)
    log.info("KFP API at %s is up (multi_user=%s)", host, getattr(health, "multi_user", None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return call_kfp(host, kfp.Client, host=host, existing_token=token, namespace=namespace or "kubeflow")


def check_package(package: str | Path) -> Path:
    p = Path(package)
    if not p.is_file():
        raise InputError("package", f"{p} does not exist", "compile it first: lulc pipeline compile -o pipeline.yaml")
    return p


def ensure_experiment(client: Any, host: str, name: str, namespace: str | None) -> str:
    experiment = call_kfp(host, client.create_experiment, name=name, namespace=namespace)
    return str(experiment.experiment_id)


def submit(
    package: str | Path,
    host: str,
    *,
    experiment: str = "lulc",
    run_name: str | None = None,
    params: dict[str, Any] | None = None,
    token: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    upload: bool = False,
    wait: bool = False,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
) -> SubmitResult:
    """Create a run of the compiled `package` (create_run_from_pipeline_package), optionally wait for it.

    Args:
        package: Compiled pipeline YAML.
        host: KFP API URL, e.g. http://127.0.0.1:8888 or https://kubeflow.example.org/pipeline.
        experiment: Experiment name (created when missing).
        run_name: Run name (default: pipeline file name and time).
        params: Pipeline parameters (e.g. {"epochs": 20, "deploy_target": "kserve"}).
        token: Bearer token (default: env KFP_TOKEN).
        namespace: Kubeflow profile namespace (multi-user clusters).
        service_account: Kubernetes service account of the run (e.g. lulc-pipeline for the deploy step).
        upload: Also upload the package as a pipeline (visible under Pipelines) and run that version.
        wait: Wait until the run finishes; raise RunFailedError unless it SUCCEEDED.
        timeout_s: Longest wait.
        poll_s: Seconds between status reads while waiting.
    """
    path = check_package(package)
    client = make_client(host, token, namespace)
    host = check_host(host)
    exp_id = ensure_experiment(client, host, experiment, namespace)
    pipeline_id = None
    if upload:
        name = f"{path.stem}-{os.urandom(3).hex()}"
        uploaded = call_kfp(host, client.upload_pipeline, str(path), pipeline_name=name, namespace=namespace)
        pipeline_id = str(uploaded.pipeline_id)
        versions = call_kfp(host, client.list_pipeline_versions, pipeline_id=pipeline_id)
        version_id = versions.pipeline_versions[0].pipeline_version_id
        run = call_kfp(
            host,
            client.run_pipeline,
            experiment_id=exp_id,
            job_name=run_name or name,
            params=params or {},
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=service_account,
        )
        run_id = str(run.run_id)
    else:
        result = call_kfp(
            host,
            client.create_run_from_pipeline_package,
            str(path),
            arguments=params or {},
            run_name=run_name,
            experiment_id=exp_id,
            service_account=service_account,
        )
        run_id = str(result.run_id)
    out = SubmitResult(
        run_id=run_id, experiment_id=exp_id, url=f"{host}/#/runs/details/{run_id}", pipeline_id=pipeline_id
    )
    log.info("submitted run %s (%s)", run_id, out.url)
    if wait:
        try:
            final = call_kfp(host, client.wait_for_run_completion, run_id, timeout_s, sleep_duration=poll_s)
        except TimeoutError as exc:
            raise RunFailedError(f"run {run_id} did not finish within {timeout_s:g} s — see {out.url}") from exc
        out.state = str(final.state)
        if out.state.upper() != "SUCCEEDED":
            raise RunFailedError(f"run {run_id} finished {out.state} — see {out.url}")
    return out
