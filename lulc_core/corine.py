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
# The CORINE Land Cover legend (EEA): level-3 code -> (name, RGB colour).
CLC_CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {
    111: ("Continuous urban fabric", (230, 0, 77)),
    112: ("Discontinuous urban fabric", (255, 0, 0)),
    121: ("Industrial or commercial units", (204, 77, 242)),
    122: ("Road and rail networks and associated land", (204, 0, 0)),
    123: ("Port areas", (230, 204, 204)),
    124: ("Airports", (230, 204, 230)),
    131: ("Mineral extraction sites", (166, 0, 204)),
    132: ("Dump sites", (166, 77, 0)),
    133: ("Construction sites", (255, 77, 255)),
    141: ("Green urban areas", (255, 166, 255)),
    142: ("Sport and leisure facilities", (255, 230, 255)),
    211: ("Non-irrigated arable land", (255, 255, 168)),
    212: ("Permanently irrigated land", (255, 255, 0)),
    213: ("Rice fields", (230, 230, 0)),
    221: ("Vineyards", (230, 128, 0)),
    222: ("Fruit trees and berry plantations", (242, 166, 77)),
    223: ("Olive groves", (230, 166, 0)),
    231: ("Pastures", (230, 230, 77)),
    241: ("Annual crops associated with permanent crops", (255, 230, 166)),
    242: ("Complex cultivation patterns", (255, 230, 77)),
    243: ("Land principally occupied by agriculture, with significant areas of natural vegetation", (230, 204, 77)),
    244: ("Agro-forestry areas", (242, 204, 166)),
    311: ("Broad-leaved forest", (128, 255, 0)),
    312: ("Coniferous forest", (0, 166, 0)),
    313: ("Mixed forest", (77, 255, 0)),
    321: ("Natural grasslands", (204, 242, 77)),
    322: ("Moors and heathland", (166, 255, 128)),
    323: ("Sclerophyllous vegetation", (166, 230, 77)),
    324: ("Transitional woodland-shrub", (166, 242, 0)),
    331: ("Beaches, dunes, sands", (230, 230, 230)),
    332: ("Bare rocks", (204, 204, 204)),
    333: ("Sparsely vegetated areas", (204, 255, 204)),
    334: ("Burnt areas", (0, 0, 0)),
    335: ("Glaciers and perpetual snow", (166, 230, 204)),
    411: ("Inland marshes", (166, 166, 255)),
    412: ("Peat bogs", (77, 77, 255)),
    421: ("Salt marshes", (204, 204, 255)),
    422: ("Salines", (230, 230, 255)),
    423: ("Intertidal flats", (166, 166, 230)),
    511: ("Water courses", (0, 204, 242)),
    512: ("Water bodies", (128, 242, 230)),
    521: ("Coastal lagoons", (0, 255, 166)),
    522: ("Estuaries", (166, 255, 230)),
    523: ("Sea and ocean", (230, 242, 255)),
}
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
