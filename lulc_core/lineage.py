"""Lineage of a model: which code, configuration, labels, area, time frames and imagery produced it.

Every registered model version records these as tags (`lulc.lineage.*`), so a version can be traced back to
the commit and the run configuration that made it, and two versions' test metrics are compared only when they
were measured on the same test set (`fingerprint_test_set`).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lulc_core import __version__
from lulc_core.bundle import METADATA_FILE, ModelBundle, Provenance
from lulc_core.config import RunConfig
from lulc_core.labels import LabelSet
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

TAG_PREFIX = "lulc.lineage."
_REPO_DIR = Path(__file__).resolve().parents[1]


def code_version(repo_dir: Path | None = None) -> str:
    """The git commit SHA of the checkout holding lulc (with `-dirty` when tracked files changed).

    Falls back to the installed package version (`lulc_core.__version__`) outside a git checkout or when git is
    missing, as in the container image.
    """
    cwd = repo_dir or _REPO_DIR
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=cwd, capture_output=True, timeout=5, check=False
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return __version__
    if len(sha) != 40:
        return __version__
    return f"{sha}-dirty" if dirty == 1 else sha


def config_hash(cfg: RunConfig) -> str:
    """Hash of the run configuration (`RunConfig.fingerprint()`)."""
    return cfg.fingerprint()


def fingerprint_test_set(tile_ids: Iterable[str]) -> str:
    """Order-independent hash of the test tile ids: equal fingerprints mean metrics are comparable."""
    ids = sorted(set(tile_ids))
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def describe_area(cfg: RunConfig) -> str:
    """The AOI as text: name plus bbox or AOI file."""
    where = f"bbox={cfg.area.bbox}" if cfg.area.bbox is not None else f"aoi={cfg.area.aoi}"
    return f"{cfg.area.name} {where}"


def describe_imagery(cfg: RunConfig) -> str:
    """The imagery store and the settings that change the pixels."""
    im = cfg.imagery
    if im.store == "sentinelhub":
        sh = im.sentinelhub
        where = f"sentinelhub {sh.base_url} evalscript={sh.evalscript} order={sh.mosaicking_order}"
        where += f" maxcc={sh.max_cloud_coverage} s1={sh.s1_backscatter}"
    else:
        where = f"local {im.local_dir}"
    return f"{where} bands={','.join(im.bands)} resolution={im.resolution}m"


def describe_labels(cfg: RunConfig) -> str:
    """The label source: an OSM extract, the ohsome API or the CORINE BYOC collection."""
    lb = cfg.labels
    if lb.source == "ohsome":
        return f"ohsome {lb.ohsome_url}"
    if lb.source == "file":
        return f"file {lb.osm_file}"
    sh = cfg.imagery.sentinelhub
    return f"corine byoc-{sh.byoc_corine_collection} {sh.base_url}"


def build_provenance(cfg: RunConfig, label_set: LabelSet, run_url: str | None = None) -> Provenance:
    """The Provenance record of a model trained with `cfg` and `label_set`."""
    return Provenance(
        code_version=code_version(),
        config_hash=config_hash(cfg),
        label_set=f"{label_set.name}:{label_set.fingerprint()}",
        area=describe_area(cfg),
        time_frames=[f"{t.start.isoformat()}/{t.end.isoformat()}" for t in cfg.area.time_frames],
        imagery_source=describe_imagery(cfg),
        osm_source=describe_labels(cfg),
        run_url=run_url,
    )


def record_run_config(bundle_dir: Path, cfg: RunConfig) -> Path:
    """Record the run's whole configuration in the bundle's lulc.json (`run_config`, and the provenance built from
    it), replacing what the train step saw: its slice of the configuration (`lulc_core.steps`).

    The predictor serves with `run_config` when given no configuration, so it must be the whole one.
    """
    meta = ModelBundle.read_metadata(bundle_dir)
    provenance = build_provenance(cfg, meta.label_set, run_url=meta.provenance.run_url)
    kept = {"created_at": meta.provenance.created_at, "tracking_run": meta.provenance.tracking_run}
    meta.provenance = provenance.model_copy(update=kept)
    meta.run_config = cfg.model_dump(mode="json")
    with atomic_path(Path(bundle_dir) / METADATA_FILE) as tmp:
        tmp.write_text(meta.model_dump_json(indent=2))
    return Path(bundle_dir)


def lineage_tags(provenance: Provenance) -> dict[str, str]:
    """Provenance as flat string tags `lulc.lineage.<field>` (lists joined with ';', None left out)."""
    tags: dict[str, str] = {}
    for key, value in provenance.model_dump().items():
        if value is None or value == []:
            continue
        tags[TAG_PREFIX + key] = ";".join(value) if isinstance(value, list) else str(value)
    return tags


def provenance_from_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """The `lulc.lineage.*` tags of a version without the prefix."""
    return {k.removeprefix(TAG_PREFIX): str(v) for k, v in tags.items() if k.startswith(TAG_PREFIX)}
