"""CORINE Land Cover as an optional label source, through a Sentinel Hub BYOC collection.

Sentinel Hub serves CORINE (editions 1990-2018, 100 m) as BYOC collection `cbdba844-f86d-41dc-95ad-b3f7f12535e9`
on the CreoDIAS deployment, band `CLC` holding the legend index 1..44 (48 = no data). The label set maps CORINE
level-3 codes onto its classes (`corine_codes` per class in the label set YAML); codes no class claims become 0
(`unknown`). Requests, retries, cache and credentials are those of `SentinelHubStore` (evalscript `corine_v1`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import sentinelhub as sh
from tqdm import tqdm

from lulc_core.config import SentinelHubConfig
from lulc_core.errors import ConfigError, LulcError
from lulc_core.geo import Tile
from lulc_core.imagery.sentinelhub import ENDPOINTS, SentinelHubStore
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster, write_geotiff

log = logging.getLogger(__name__)

CORINE_COLLECTION_ID = "cbdba844-f86d-41dc-95ad-b3f7f12535e9"
CORINE_SERVICE_URL = "https://creodias.sentinel-hub.com"
CORINE_FIRST_EDITION = date(1986, 1, 1)
# CORINE level-3 codes in legend order: band value i (1..44) is CLC_LEGEND[i - 1].
CLC_LEGEND = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
    211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
    311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335,
    411, 412, 421, 422, 423,
    511, 512, 521, 522, 523,
)  # fmt: skip
_LOCK = threading.Lock()


def corine_lookup(label_set: LabelSet) -> np.ndarray:
    """A 256-entry table from CORINE legend index to the label set's raster value (0 where unmapped).

    Raises:
        ConfigError: a code that is not a CORINE level-3 code, or one claimed by two classes.
    """
    table = np.zeros(256, np.uint8)
    owner: dict[int, str] = {}
    for value, cls in enumerate(label_set.classes, start=1):
        for code in cls.corine_codes:
            if code not in CLC_LEGEND:
                raise ConfigError(
                    f"label_set {label_set.name}: {cls.name}.corine_codes",
                    f"{code} is not a CORINE level-3 code",
                    "use codes like 111, 211, 311 (the CORINE Land Cover legend)",
                )
            if code in owner:
                raise ConfigError(
                    f"label_set {label_set.name}: {cls.name}.corine_codes",
                    f"code {code} is already mapped to class {owner[code]!r}",
                    "map every CORINE code to one class",
                )
            owner[code] = cls.name
            table[CLC_LEGEND.index(code) + 1] = value
    if not owner:
        raise ConfigError(f"label_set {label_set.name}", "no class has corine_codes", "add corine_codes to the classes")
    return table


class CorineLabelSource(SentinelHubStore):
    """Class rasters from CORINE Land Cover on a tile's grid.

    Args:
        cfg: Sentinel Hub settings; `byoc_corine_collection` overrides the public collection id.
        label_set: classes with their `corine_codes`.
        cache_dir: response cache directory.
        credentials: (client id, secret); default from the environment.
        service_url: deployment serving the collection (default: CreoDIAS for the commercial endpoint with its
            default URL, else `cfg.base_url`).
    """

    def __init__(
        self,
        cfg: SentinelHubConfig,
        label_set: LabelSet,
        cache_dir: Path | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        service_url: str | None = None,
    ) -> None:
        # resolution is informational: CORINE is fetched on each tile's own grid
        super().__init__(cfg, 10.0, cache_dir, credentials=credentials, evalscript="corine_v1")
        self.label_set = label_set
        self.lookup = corine_lookup(label_set)
        if service_url is None:
            default = self.endpoint.base_url == ENDPOINTS["sentinelhub"].base_url
            service_url = CORINE_SERVICE_URL if default else self.endpoint.base_url
        collection_id = cfg.byoc_corine_collection or CORINE_COLLECTION_ID
        tag = hashlib.sha1(f"{collection_id}@{service_url}".encode()).hexdigest()[:8].upper()
        with _LOCK:
            self.collection = sh.DataCollection.define_byoc(
                collection_id, name=f"LULC_CORINE_{tag}", service_url=service_url.rstrip("/")
            )

    def __repr__(self) -> str:
        return f"CorineLabelSource({self.collection.service_url!r}, label_set={self.label_set.name!r})"

    def _input_data(self, tile: Tile) -> dict[str, Any]:
        return {
            "corine": sh.SentinelHubRequest.input_data(
                self.collection,
                identifier="corine",
                time_interval=(CORINE_FIRST_EDITION, tile.end),
                mosaicking_order=sh.MosaickingOrder.MOST_RECENT,
            )
        }

    def rasterize(self, tile: Tile, when: date | None = None) -> Raster:
        """The class raster of `tile` (one uint8 band "class", 0 = unknown) from the newest edition up to `when`.

        Raises:
            NotCoveredError: CORINE has no data for the tile (outside Europe or before the first edition).
            UpstreamError: Sentinel Hub still fails after the retries.
        """
        dated = tile if when is None else tile.model_copy(update={"end": when})
        raster = self.fetch(dated, ["CLC"])
        index = np.where(raster.valid_mask, raster.data[0], 0).astype(np.uint8)
        classes = self.lookup[index][None]
        tags = {**raster.tags, "label_set": self.label_set.name, "label_source": "corine"}
        return Raster(classes, raster.transform, raster.crs, ["class"], None, tags)


def corine_label_tiles(source: CorineLabelSource, tiles: Sequence[Tile], out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<tile.id>.tif` (uint8 classes with the label set's colour map) for every tile.

    Raises:
        The source's error (NotCoveredError, UpstreamError, ...) with the tile id in its message; no partial file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for tile in tqdm(tiles, desc="corine labels", unit="tile", leave=False):
        try:
            raster = source.rasterize(tile)
        except LulcError as exc:
            if tile.id not in str(exc):
                exc.args = (f"tile {tile.id}: {exc}", *exc.args[1:])
            raise
        paths.append(write_geotiff(out / f"{tile.id}.tif", raster, colormap=source.label_set.colormap(), dtype="uint8"))
    log.info("corine labels: %d tiles in %s", len(paths), out)
    return paths
