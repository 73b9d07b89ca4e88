"""`lulc serve` and `lulc predict`.

`lulc predict --model PATH|REF` predicts in this process with lulc_core.inference; `lulc predict --url URL` asks
a running predictor (`lulc serve`) instead.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from lulc_core.errors import InputError
from lulc_core.geo import BBox

log = logging.getLogger(__name__)

FUSION_MODES = "only_model, only_osm, favour_model, favour_osm, mean_mixin, only_corine, harmonized_corine"

PREDICT_HELP = """Predict land use / land cover for a bounding box: a GeoTIFF (COG with colour map) and a PNG preview.

Examples:

  lulc predict --model lulc-sample@production --bbox 9.835,57.222,9.850,57.230 --start 2017-10-25 --end 2017-11-04 -o out.tif --preview out.png

  lulc predict --model lulc-sample@production --config conf/run.yaml --bbox 9.835,57.222,9.850,57.230 -o out.tif --fusion-mode favour_osm --threshold 0.5

  lulc predict --url http://127.0.0.1:8080 --bbox 9.835,57.222,9.850,57.230 -o out.tif
"""


SERVE_HELP = """Start the predictor locally: KServe's ModelServer with V1/V2 endpoints and the original REST API.

Examples:

  lulc serve --model lulc-sample@production --config conf/run.yaml

  lulc serve --model lulc-sample@production --host 127.0.0.1 --port 8080

Then open http://127.0.0.1:8080/docs, or call POST /segment/ (see README).
"""


def register(app: typer.Typer) -> None:
    """Add the serving commands to `app`."""
    app.command("predict", help=PREDICT_HELP)(predict)
    app.command("serve", help=SERVE_HELP)(serve)


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="Model bundle directory, or registry ref NAME@STAGE.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", envvar="LULC_CONFIG", help="Run YAML (default: the bundle's, else conf/run.yaml)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default: serving.host of --config, else the bundle's).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="HTTP port (default: serving.port of --config, else the bundle's).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Model name on /v1/models/<name>.")] = "lulc",
    device: Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda.")] = "auto",
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body (MB).")] = 32.0,
    root_path: Annotated[
        str | None,
        typer.Option("--root-path", envvar="ROOT_PATH", help="URL prefix behind a proxy (default: serving.root_path)."),
    ] = None,
) -> None:
    """Load the model once and serve until Ctrl-C / SIGTERM (graceful shutdown)."""
    from lulc_core.config import load_run_config
    from serving import isolated_argv

    cfg = load_run_config(config) if config else None
    with isolated_argv():
        from serving.observability import configure_logging
        from serving.predictor import LulcModel
        from serving.server import run_server

    configure_logging()
    lulc_model = LulcModel(name, model, cfg, device=device)
    run_server(  # host, port, root_path: the flags, else the serving section of --config or the bundle's run config
        lulc_model,
        host=host,
        port=port,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        root_path=root_path or None,
    )


def predict(
    ctx: typer.Context,
    bbox: Annotated[str, typer.Option("--bbox", help="Area as W,S,E,N in EPSG:4326 degrees.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Class GeoTIFF to write (cloud-optimised).")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model bundle directory, or registry ref NAME@<alias|version>."),
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="Base URL of a running `lulc serve`.")] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="First imagery date YYYY-MM-DD (default: end - 7 days).")
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last imagery date YYYY-MM-DD (default: today).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="LULC_CONFIG",
            help="Run YAML: imagery store, OSM source, registry, serving defaults (with --model; default: the "
            "bundle's, else conf/run.yaml; a server uses its own).",
        ),
    ] = None,
    preview: Annotated[Path | None, typer.Option("--preview", help="Also write a PNG preview with legend.")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Minimum class probability 0..1 (else unknown).")
    ] = None,
    fusion_mode: Annotated[str, typer.Option("--fusion-mode", help=f"One of: {FUSION_MODES}.")] = "only_model",
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write <output>.probabilities.tif (float32 per class).")
    ] = False,
    uncertainty: Annotated[
        bool,
        typer.Option("--uncertainty", help="Also write <output>.uncertainty.tif (TTA variance, entropy) and PNG."),
    ] = False,
    edge_buffer_m: Annotated[
        float | None,
        typer.Option("--edge-buffer-m", help="Margin predicted around the bbox, then cropped (m; default serving's)."),
    ] = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Classes averaged over test-time augmentations (default: serving.tta).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Dispatch: `--model` in-process, `--url` to a running server."""
    if (model is None) == (url is None):
        raise InputError("--model/--url", "give exactly one of them", "--model PATH_OR_REF, or --url http://HOST:PORT")
    given = getattr(ctx.get_parameter_source("config"), "name", "")  # typer's own click: compare by name
    if url is not None and given == "COMMANDLINE":
        raise InputError(
            "--config", "is not used with --url (the server predicts with its own configuration)", "drop it"
        )
    if url is not None:
        _predict_remote(
            url=url,
            bbox=bbox,
            start=start,
            end=end,
            output=output,
            preview=preview,
            threshold=threshold,
            fusion_mode=fusion_mode,
            probabilities=probabilities,
            uncertainty=uncertainty,
            edge_buffer_m=edge_buffer_m,
            tta=tta,
        )
        return
    assert model is not None
    _predict_in_process(
        model=model,
        bbox=bbox,
        start=start,
        end=end,
        config=config,
        output=output,
        preview=preview,
        threshold=threshold,
        fusion_mode=fusion_mode,
        probabilities=probabilities,
        uncertainty=uncertainty,
        edge_buffer_m=edge_buffer_m,
        tta=tta,
    )


def parse_bbox(text: str) -> BBox:
    """`W,S,E,N` -> BBox, with errors naming --bbox."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(
            "--bbox", f"{text!r} is not four numbers", "write W,S,E,N e.g. 9.835,57.222,9.850,57.230"
        ) from None
    return BBox.from_sequence(values, "--bbox")


def date_range(start: str | None, end: str | None) -> tuple[date, date]:
    """--start/--end with the original API's defaults: end today, start a week before end."""
    from lulc_core.config import parse_date

    end_d = parse_date(end, "--end") if end else date.today()
    start_d = parse_date(start, "--start") if start else end_d - timedelta(days=7)
    return start_d, end_d


def _predict_in_process(
    *,
    model: str,
    bbox: str,
    start: str | None,
    end: str | None,
    config: Path | None,
    output: Path,
    preview: Path | None,
    threshold: float | None,
    fusion_mode: str,
    probabilities: bool,
    uncertainty: bool,
    edge_buffer_m: float | None,
    tta: bool | None,
) -> None:
    """Load the bundle (path or registry ref), build the stores from the config, predict and write the files."""
    from lulc_core.bundle import ModelBundle
    from lulc_core.config import load_run_config
    from lulc_core.imagery import build_imagery_store
    from lulc_core.inference import (
        PredictOptions,
        Predictor,
        prediction_paths,
        write_prediction,
        write_preview_png,
        write_uncertainty_preview_png,
    )
    from lulc_core.inference.fusion import CORINE_MODES, OSM_MODES, build_fusion_sources
    from lulc_core.model_source import resolve_source

    area = parse_bbox(bbox)
    start_d, end_d = date_range(start, end)
    options = PredictOptions.build(
        threshold=threshold,
        fusion_mode=fusion_mode,
        probabilities=probabilities,
        uncertainty=uncertainty,
        edge_buffer_m=edge_buffer_m,
        tta=tta,
    )
    bundle_dir, cfg = resolve_source(model, load_run_config(config) if config else None)  # as `lulc serve` does
    log.info("model %s: bundle %s", model, bundle_dir)
    bundle = ModelBundle.load(bundle_dir)
    cache = (cfg.imagery.cache_dir or cfg.work_dir / "cache").resolve()
    store = build_imagery_store(cfg.imagery, cache_dir=cache / "imagery")
    source, corine = None, None
    if options.fusion_mode in OSM_MODES or options.fusion_mode in CORINE_MODES:
        labels = options.fusion_mode in OSM_MODES
        source, corine = build_fusion_sources(cfg, bundle.metadata.label_set, cache / "osm", labels=labels)
    predictor = Predictor(bundle, store, source, cfg.serving, corine=corine)
    prediction = predictor.predict(area, start_d, end_d, options)
    written = [write_prediction(prediction, output)]
    paths = prediction_paths(output)
    if prediction.probabilities is not None:
        written.append(paths["probabilities"])
    if prediction.uncertainty is not None:
        written.append(paths["uncertainty"])
        written.append(write_uncertainty_preview_png(prediction, paths["uncertainty"].with_suffix(".png")))
    if preview is not None:
        written.append(write_preview_png(prediction, preview))
    counts = prediction.class_pixel_counts()
    total = max(sum(counts.values()), 1)
    shares = ", ".join(f"{name} {100 * n / total:.1f}%" for name, n in counts.items() if n)
    typer.echo(f"predicted {prediction.classes.width} x {prediction.classes.height} px: {shares}")
    for path in written:
        typer.echo(f"wrote {path}")


def _predict_remote(
    *,
    url: str,
    bbox: str,
    start: str | None,
    end: str | None,
    output: Path,
    preview: Path | None,
    threshold: float | None,
    fusion_mode: str,
    probabilities: bool,
    uncertainty: bool,
    edge_buffer_m: float | None,
    tta: bool | None,
) -> None:
    """Ask a running predictor's original API (POST /segment/, /segment/preview, /uncertainty/) and write the files."""
    import requests

    from lulc_core.errors import UpstreamError
    from lulc_core.inference import prediction_paths
    from lulc_core.raster import atomic_path

    if probabilities:
        raise InputError("--probabilities", "is not served by the REST API", "use --model, or V1 with outputs")
    area = parse_bbox(bbox)
    start_d, end_d = date_range(start, end)
    body: dict[str, object] = {
        "area_coords": list(area.as_tuple()),
        "start_date": start_d.isoformat(),
        "end_date": end_d.isoformat(),
        "fusion_mode": fusion_mode,
        "grid": "utm",  # the same grid as `lulc predict --model` (the API's default is the original's EPSG:4326)
    }
    for key, value in (("threshold", threshold), ("edge_buffer_m", edge_buffer_m), ("tta", tta)):
        if value is not None:  # unset: the server's serving settings
            body[key] = value
    base = url.rstrip("/")
    jobs = [("/segment/", output)]
    if preview is not None:
        jobs.append(("/segment/preview", preview))
    if uncertainty:
        unc = prediction_paths(output)["uncertainty"]
        jobs += [("/uncertainty/", unc), ("/uncertainty/preview", unc.with_suffix(".png"))]
    for route, path in jobs:
        try:
            response = requests.post(base + route, json=body, timeout=900)
        except requests.RequestException as exc:
            raise UpstreamError("lulc server", f"cannot reach {base}: {exc}", status_code=503) from exc
        if response.status_code != 200:
            try:
                info = response.json()
            except ValueError:
                info = {"error": response.text[:300]}
            message = info.get("error") or str(info.get("detail", info))
            if 400 <= response.status_code < 500:
                raise InputError(str(info.get("field") or route), message, info.get("fix"))
            retry = response.headers.get("Retry-After")
            raise UpstreamError(
                "lulc server",
                f"{route} answered {response.status_code}: {message}",
                retry_after=float(retry) if retry and retry.isdigit() else None,
                status_code=response.status_code,
            )
        with atomic_path(path) as tmp:
            tmp.write_bytes(response.content)
        typer.echo(f"wrote {path} ({response.headers.get('X-Cache', 'miss')})")
