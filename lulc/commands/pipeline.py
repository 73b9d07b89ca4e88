"""`lulc pipeline`: compile the Kubeflow training pipeline, run it locally (kfp.local), submit or schedule it.

kfp is imported inside the commands only, so `lulc --help` stays fast.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from lulc_core.config import load_run_config
from lulc_core.errors import InputError

app = typer.Typer(
    help="Kubeflow pipeline: compile, run locally (kfp.local), submit to a cluster, schedule.", no_args_is_help=True
)

DEFAULT_CONFIG = Path("conf/run.yaml")
CONFIG_OPTION = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML.")
COMPILE_CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="Run configuration YAML to compile now (default conf/run.yaml; not with --package)."
)
PARAM_OPTION = typer.Option(
    None, "--param", "-p", help="Pipeline parameter NAME=VALUE (VALUE parsed as JSON when it can be); repeatable."
)
HOST_OPTION = typer.Option(..., "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://127.0.0.1:8888.")
PACKAGE_OPTION = typer.Option(None, "--package", help="Compiled pipeline YAML (default: compile --config now).")
EXPERIMENT_OPTION = typer.Option("lulc", "--experiment", help="Experiment name (created if missing).")
COMPILE_IMAGE_OPTION = typer.Option(
    None, "--image", help="Project image when compiling now (with --package: -p image=REF)."
)
NAMESPACE_OPTION = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user).")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`NAME=VALUE` strings to a dict; VALUE is JSON when it parses (numbers, lists), else the plain string."""
    params: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError("--param", f"{item!r} is not NAME=VALUE", "e.g. --param epochs=20")
        try:
            params[name.strip()] = json.loads(raw)
        except ValueError:
            params[name.strip()] = raw
    return params


def check_params(package: Path, params: dict[str, Any]) -> None:
    """Every parameter must be one the compiled pipeline declares; `deploy_target=kserve` needs a registry KServe
    can fetch from (`lulc_core.config.check_deploy_target`)."""
    import yaml

    from pipelines.submit import check_package

    docs = list(yaml.safe_load_all(check_package(package).read_text()))
    declared = docs[0].get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise InputError("--param", f"unknown pipeline parameters {unknown}", f"choose from {sorted(declared)}")
    if params.get("deploy_target") == "kserve":  # refused now, as the configure step would, not after training
        from components._runtime import apply_overrides
        from lulc_core.config import check_deploy_target

        config_json = params.get("run_config") or declared["run_config"]["defaultValue"]
        keys = ("aoi_bbox", "aoi_file", "time_frames", "label_set", "imagery_store", "model_variant", "epochs")
        overrides = {k: params[k] for k in (*keys, "registry") if k in params}
        check_deploy_target(apply_overrides(config_json, **overrides), "kserve")


@contextmanager
def _package(package: Path | None, config: Path | None, image: str | None) -> Iterator[Path]:
    """The given package, or the pipeline compiled from `config` into a temporary file.

    Raises:
        InputError: `--config` or `--image` with `--package` (they would be ignored: the package is compiled).
    """
    if package is not None:
        if config is not None:
            raise InputError("--config", "is not used with --package (the package is compiled)", "drop one of them")
        if image is not None:
            raise InputError("--image", "is not used with --package (the package is compiled)", "use -p image=REF")
        yield package
        return
    from pipelines.compile import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="lulc-pipeline-") as tmp:
        yield compile_pipeline(load_run_config(config or DEFAULT_CONFIG), Path(tmp) / "lulc-training.yaml", image)


@contextmanager
def _checked_package(
    package: Path | None, config: Path | None, image: str | None, param: list[str] | None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The package (see `_package`) and the `--param` values, checked against the parameters it declares."""
    params = parse_params(param)
    with _package(package, config, image) as pkg:
        check_params(pkg, params)
        yield pkg, params


@app.command("compile")
def compile_cmd(
    output: Path = typer.Option(Path("pipeline.yaml"), "--output", "-o", help="IR YAML to write."),
    config: Path = CONFIG_OPTION,
    image: str | None = typer.Option(None, "--image", help="Project image, pinned (default: env LULC_IMAGE)."),
) -> None:
    """Compile the training pipeline to KFP IR YAML (task settings from the config's `pipeline` section).

    Example: lulc pipeline compile -o pipeline.yaml --config conf/run.yaml --image ghcr.io/lulc/lulc:0.1.0
    """
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(load_run_config(config), output, image)
    typer.echo(f"pipeline written to {path}")


@app.command("run")
def run_cmd(
    local: bool = typer.Option(False, "--local", help="Run with kfp.local in this environment (no cluster)."),
    config: Path = CONFIG_OPTION,
    pipeline_root: Path | None = typer.Option(None, "--pipeline-root", help="Artifacts (default <work_dir>/kfp)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    deploy_target: str = typer.Option("local", "--deploy-target", help="'local' or 'none'."),
) -> None:
    """Run the whole pipeline locally with kfp.local on the configuration (embedded default: the sample area).

    Example: lulc pipeline run --local --config conf/run.yaml --epochs 2
    """
    if not local:
        raise InputError("--local", "only local runs are started here", "add --local, or use `lulc pipeline submit`")
    from pipelines.local import run_local

    cfg = load_run_config(config, {"training": {"epochs": epochs}} if epochs else None)
    run = run_local(cfg, pipeline_root, deploy_target=deploy_target)
    typer.echo(f"pipeline root  {run.pipeline_root}")
    typer.echo(f"model bundle   {run.bundle_dir}")
    reg = run.registration
    verdict = "promoted to production" if reg.get("passed") else "not promoted"
    typer.echo(f"registered as  {reg.get('ref')} ({reg.get('uri')}, {verdict})")
    typer.echo("metrics        " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(run.metrics.items())))
    typer.echo(f"took           {run.seconds:.0f} s")


@app.command("submit")
def submit_cmd(
    host: str = HOST_OPTION,
    experiment: str = EXPERIMENT_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait for the run to finish; non-zero exit unless it succeeded."),
    package: Path | None = PACKAGE_OPTION,
    config: Path | None = COMPILE_CONFIG_OPTION,
    image: str | None = COMPILE_IMAGE_OPTION,
    param: list[str] | None = PARAM_OPTION,
    run_name: str | None = typer.Option(None, "--run-name", help="Run name."),
    namespace: str | None = NAMESPACE_OPTION,
    service_account: str | None = typer.Option(None, "--service-account", help="e.g. lulc-pipeline (deploy RBAC)."),
    upload: bool = typer.Option(False, "--upload", help="Also upload the pipeline and run that version."),
    timeout: float = typer.Option(6 * 3600, "--timeout", help="Longest wait in seconds (with --wait)."),
    poll: float = typer.Option(10.0, "--poll-interval", help="Seconds between status reads (with --wait)."),
) -> None:
    """Submit a run to Kubeflow Pipelines (token from env KFP_TOKEN).

    Example: KFP_TOKEN=$(kubectl -n kubeflow create token default) lulc pipeline submit --host http://127.0.0.1:8888 --package pipeline.yaml -p epochs=20 -p deploy_target=kserve --wait
    """
    from pipelines.submit import submit

    with _checked_package(package, config, image, param) as (pkg, params):
        result = submit(
            pkg,
            host,
            experiment=experiment,
            run_name=run_name,
            params=params,
            namespace=namespace,
            service_account=service_account,
            upload=upload,
            wait=wait,
            timeout_s=timeout,
            poll_s=poll,
        )
    typer.echo(f"run {result.run_id} in experiment {result.experiment_id}: {result.url}")
    if result.state:
        typer.echo(f"finished {result.state}")


@app.command("schedule")
def schedule_cmd(
    cron: str = typer.Option(..., "--cron", help="Cron: 5 fields (m h dom mon dow) or KFP's 6 (seconds first)."),
    host: str = HOST_OPTION,
    name: str = typer.Option("lulc-retrain", "--name", help="Recurring run name."),
    experiment: str = EXPERIMENT_OPTION,
    package: Path | None = PACKAGE_OPTION,
    config: Path | None = COMPILE_CONFIG_OPTION,
    image: str | None = COMPILE_IMAGE_OPTION,
    param: list[str] | None = PARAM_OPTION,
    namespace: str | None = NAMESPACE_OPTION,
    service_account: str | None = typer.Option(None, "--service-account", help="e.g. lulc-pipeline."),
) -> None:
    """Create a recurring run (retraining) on a cron schedule; missed runs are not caught up.

    Example: lulc pipeline schedule --host http://127.0.0.1:8888 --cron "0 3 * * 1" --package pipeline.yaml
    """
    from pipelines.schedule import schedule

    with _checked_package(package, config, image, param) as (pkg, params):
        result = schedule(
            pkg,
            host,
            cron,
            name=name,
            experiment=experiment,
            params=params,
            namespace=namespace,
            service_account=service_account,
        )
    typer.echo(f"recurring run {result.recurring_run_id} ({result.cron}): {result.url}")
