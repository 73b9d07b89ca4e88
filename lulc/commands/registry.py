"""`lulc registry` commands: one CLI for the MLflow and Neptune backends.

REF is `NAME`, `NAME@latest`, `NAME@<version>`, `NAME@<staging|production|archived|none>` or `@production`
(the configured model name). The registry comes from `--config` (its `registry:` section and `work_dir`), or
from the defaults: MLflow on `sqlite:///<work-dir>/mlflow.db` (or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from lulc_core.config import RegistryConfig, load_run_config
from lulc_core.registry import ModelRegistry, ModelVersionInfo, RegistrationInfo, build_registry

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Model registry: list, show, promote, resolve, pull, register, gate, export-onnx.", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="LULC_CONFIG", help="Run YAML (uses its registry section).")
]
WorkDirOpt = Annotated[
    Path | None, typer.Option("--work-dir", envvar="LULC_WORK_DIR", help="Work directory (default .lulc).")
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="Override registry.backend: mlflow or neptune.", show_default=False)
]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="Override the MLflow tracking URI.")]
RefArg = Annotated[str, typer.Argument(help="NAME, NAME@latest, NAME@<version> or NAME@<stage>.")]


def _settings(
    config: Path | None, work_dir: Path | None, backend: str | None, tracking_uri: str | None
) -> tuple[RegistryConfig, Path]:
    if config is not None:
        run = load_run_config(config)
        cfg, wd = run.registry, run.work_dir
    else:
        cfg, wd = RegistryConfig(), Path(".lulc")
    updates: dict[str, object] = {}
    if backend:
        updates["backend"] = backend
    if tracking_uri:
        updates["tracking_uri"] = tracking_uri
    if updates:
        cfg = RegistryConfig.model_validate({**cfg.model_dump(), **updates})
    return cfg, work_dir or wd


_REGISTRY_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("config", ConfigOpt),
        ("work_dir", WorkDirOpt),
        ("backend", BackendOpt),
        ("tracking_uri", TrackingOpt),
    )
]


def _registry_command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command taking `registry` (and optionally `registry_cfg`) instead of the shared options.

    The command gets --config/--work-dir/--backend/--tracking-uri, and is called with the registry they open.
    """

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in ("registry", "registry_cfg")]
        wants_cfg = "registry_cfg" in signature.parameters

        @functools.wraps(func)
        def command(
            *args: object,
            config: Path | None = None,
            work_dir: Path | None = None,
            backend: str | None = None,
            tracking_uri: str | None = None,
            **kwargs: object,
        ) -> None:
            cfg, wd = _settings(config, work_dir, backend, tracking_uri)
            if wants_cfg:
                kwargs["registry_cfg"] = cfg
            func(*args, registry=build_registry(cfg, wd), **kwargs)

        command.__signature__ = signature.replace(parameters=[*own, *_REGISTRY_OPTIONS])  # type: ignore[attr-defined]
        return app.command(name)(command)

    return decorate


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _row(v: ModelVersionInfo) -> str:
    gate = {True: "passed", False: "rejected", None: "-"}[v.gate_passed]
    created = (v.created_at or "-")[:19]
    return (
        f"{v.name:<24} {v.version:>4}  {v.stage:<10} {created:<19}  {_fmt(v.metrics.get('miou')):>7}  "
        f"{_fmt(v.metrics.get('overall_accuracy')):>7}  {gate:<8}  {','.join(v.aliases) or '-'}"
    )


@_registry_command("list")
def list_cmd(
    name: Annotated[str | None, typer.Argument(help="Model name (default: every registered model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    *,
    registry: ModelRegistry,
) -> None:
    """List the versions of a model (or of every model), newest first."""
    names = [name] if name else registry.list_models()
    versions = [v for n in names for v in registry.list_versions(n)]
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in versions], indent=2))
        return
    if not versions:
        typer.echo("no registered models yet — `lulc registry register BUNDLE_DIR` adds one")
        return
    typer.echo(f"{'NAME':<24} {'VER':>4}  {'STAGE':<10} {'CREATED':<19}  {'mIoU':>7}  {'ACC':>7}  {'GATE':<8}  ALIASES")
    for v in versions:
        typer.echo(_row(v))


@_registry_command("show")
def show_cmd(ref: RefArg, *, registry: ModelRegistry) -> None:
    """Show one version as JSON: stage, metrics, lineage and gate tags, source and KServe storage URI."""
    typer.echo(registry.get(ref).model_dump_json(indent=2))


@_registry_command("promote")
def promote_cmd(
    ref: RefArg,
    stage: Annotated[str, typer.Option("--stage", "-s", help="none, staging, production or archived.")],
    *,
    registry: ModelRegistry,
) -> None:
    """Move a version to a stage (the previous production version is archived)."""
    info = registry.promote(ref, stage)
    typer.echo(f"{info.name}@{info.version} -> {info.stage}")


@_registry_command("resolve")
def resolve_cmd(ref: RefArg, *, registry: ModelRegistry) -> None:
    """Download the version's bundle into the local cache (once) and print its directory."""
    typer.echo(str(registry.resolve(ref)))


@_registry_command("export-onnx")
def export_onnx_cmd(ref: RefArg, *, registry: ModelRegistry) -> None:
    """Export the version's model to ONNX, attach model.onnx to the version's bundle and print its path."""
    typer.echo(str(registry.export_onnx(ref)))


@_registry_command("register")
def register_cmd(
    bundle_dir: Annotated[Path, typer.Argument(help="Model bundle directory (lulc.json + model/).")],
    name: Annotated[str | None, typer.Option("--name", help="Registered model name (default: configured).")] = None,
    description: Annotated[str | None, typer.Option("--description", help="Version description.")] = None,
    test_set: Annotated[str | None, typer.Option("--test-set", help="Test-set fingerprint.")] = None,
    onnx: Annotated[
        bool | None,
        typer.Option(
            "--onnx/--no-onnx",
            help="Export model.onnx (verified against torch) so the version is served by onnxruntime "
            "[default: registry.export_onnx, true].",
            show_default=False,
        ),
    ] = None,
    *,
    registry: ModelRegistry,
    registry_cfg: RegistryConfig,
) -> None:
    """Register a bundle as a new version (stage none) and print its reference."""
    export = registry_cfg.export_onnx if onnx is None else onnx
    info = RegistrationInfo(name=name, description=description, test_set=test_set, export_onnx=export)
    typer.echo(str(registry.register(bundle_dir, info)))


@_registry_command("gate")
def gate_cmd(
    ref: RefArg,
    min_miou: Annotated[float | None, typer.Option("--min-miou", help="Override gate.min_miou.")] = None,
    min_accuracy: Annotated[float | None, typer.Option("--min-accuracy", help="Override gate.min_accuracy.")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Override gate.tolerance.")] = None,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote when passed.")] = True,
    *,
    registry: ModelRegistry,
    registry_cfg: RegistryConfig,
) -> None:
    """Apply the quality gate: record the decision on the version, promote when passed, exit 1 when rejected."""
    from lulc_core.registry.gate import apply_gate

    overrides = {"min_miou": min_miou, "min_accuracy": min_accuracy, "tolerance": tolerance}
    gate_cfg = registry_cfg.gate.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    gate_cfg = type(gate_cfg).model_validate(gate_cfg.model_dump())
    candidate = registry.get(ref)
    decision = apply_gate(registry, candidate.ref, gate_cfg, promote=promote)
    verdict: Literal["PASSED", "REJECTED"] = "PASSED" if decision.passed else "REJECTED"
    action = " (promoted to production)" if decision.passed and promote else ""
    typer.echo(f"gate {verdict} for {candidate.ref}{action}")
    for key, value in decision.numbers.model_dump().items():
        typer.echo(f"  {key:<20} {value}")
    for reason in decision.reasons:
        typer.echo(f"  - {reason}")
    if not decision.passed:
        raise typer.Exit(1)


@app.command("pull")
def pull_cmd(
    pairs: Annotated[
        list[str],
        typer.Argument(
            help="SOURCE DEST [SOURCE DEST ...]: a registry reference (NAME@stage) or a neptune:// storage URI, and "
            "the directory to fill (KServe's storage-initializer arguments: URI /mnt/models).",
            show_default=False,
        ),
    ],
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = None,
    backend: BackendOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Download registered bundles into directories (past the cache), as KServe's storage initializer does.

    Example: lulc registry pull neptune://lulc-team/registry/LREG-LULC-3 /mnt/models
    """
    from lulc_core.errors import InputError
    from lulc_core.registry.storage import pull

    if len(pairs) % 2:
        raise InputError("pull", f"{len(pairs)} arguments are not SOURCE DEST pairs", "give SOURCE DEST [SOURCE DEST]")
    cfg, wd = _settings(config, work_dir, backend, tracking_uri)
    for source, dest in zip(pairs[::2], pairs[1::2], strict=True):
        typer.echo(str(pull(source, Path(dest), cfg, wd)))


@app.command("neptune-sync")
def neptune_sync_cmd(
    project: Annotated[
        str | None, typer.Option("--project", envvar="NEPTUNE_PROJECT", help="workspace/project on the server.")
    ] = None,
    path: Annotated[Path, typer.Option("--path", help="Directory holding .neptune/.")] = Path(),
) -> None:
    """Upload registrations stored with NEPTUNE_MODE=offline to the Neptune server of NEPTUNE_API_TOKEN."""
    from lulc_core.registry.neptune_backend import sync_offline

    sync_offline(project, path)
    typer.echo(f"synchronised {path.resolve() / '.neptune'} to {project}")
