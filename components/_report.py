"""Small HTML/Markdown renderers for the reports the components show in the KFP UI."""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def img_tag(png: Path, alt: str) -> str:
    """An <img> with the PNG inlined (the KFP UI shows HTML artifacts in a sandboxed iframe)."""
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/><figcaption>{html.escape(alt)}</figcaption></figure>'


def html_page(title: str, body: str) -> str:
    """A minimal standalone HTML page."""
    style = "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:640px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table (numbers to 4 significant digits)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def evaluation_html(report: Any, confusion_png: Path | None, previews: Sequence[Path]) -> str:
    """The evaluation report: headline numbers, per-class metrics, confusion matrix and sample predictions."""
    rows = [(name, m.iou, m.precision, m.recall, m.f1, m.support) for name, m in report.per_class.items()]
    body = html_table(["overall accuracy", "mIoU"], [(report.overall_accuracy, report.miou)])
    body += "<h2>Per class</h2>" + html_table(["class", "IoU", "precision", "recall", "F1", "support"], rows)
    if confusion_png is not None and confusion_png.is_file():
        body += "<h2>Confusion matrix</h2>" + img_tag(
            confusion_png, "confusion matrix (rows: truth, columns: prediction)"
        )
    if previews:
        body += "<h2>Sample predictions (test tiles)</h2>" + "".join(img_tag(p, p.stem) for p in previews)
    return html_page("lulc evaluation", body)


def sample_previews(
    bundle_dir: Path, imagery_dir: Path, tile_ids: Sequence[str], out_dir: Path, n: int = 2
) -> list[Path]:
    """Predict the first `n` tiles with the bundle and write PNG previews with a legend."""
    from lulc_core.bundle import ModelBundle
    from lulc_core.inference import predict_raster, write_preview_png
    from lulc_core.raster import read_geotiff

    bundle = ModelBundle.load(bundle_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previews = []
    for tile_id in list(tile_ids)[:n]:
        raster = read_geotiff(imagery_dir / f"{tile_id}.tif")
        prediction = predict_raster(bundle, raster)
        previews.append(Path(write_preview_png(prediction, out_dir / f"{tile_id}.png")))
    return previews


def gap_pages(stats: dict[str, Any], map_png: Path, conflicts: Any, top: int = 20) -> tuple[str, str]:
    """The OSM gap report as an HTML page (map, per-class table, largest conflicts) and a Markdown table."""
    headers = ["class", "predicted km²", "OSM-mapped share", "OSM agrees", "gap km²"]
    rows = [
        (name, c["predicted_km2"], _share(c["osm_mapped_share"]), _share(c["osm_agreement_share"]), c["gap_km2"])
        for name, c in stats["per_class"].items()
    ]
    head = (
        f"{stats['gap_polygons']} gap polygons ({stats['gap_km2']:.4g} km²) and {stats['conflict_polygons']} "
        f"conflicts ({stats['conflict_km2']:.4g} km²) at confidence ≥ {stats['confidence']}, "
        f"{stats['blocks_compared']} of {stats['blocks_total']} blocks compared."
    )
    review = [
        (r.osm_class, r.model_class, r.area_m2, r.mean_confidence, r.block) for r in conflicts.head(top).itertuples()
    ]
    body = f"<p>{html.escape(head)}</p>" + img_tag(map_png, "classes with OSM gaps (red)")
    body += "<h2>Per class</h2>" + html_table(headers, rows)
    body += f"<h2>Largest conflicts (of {len(conflicts)})</h2>"
    body += html_table(["OSM class", "model class", "area m²", "mean confidence", "block"], review)
    return html_page("OSM gap report", body), f"# OSM gap report\n\n{head}\n\n" + md_table(headers, rows)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
