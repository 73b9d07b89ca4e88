"""CORINE Land Cover from a Sentinel Hub BYOC collection: raw CLC codes for any tile, and CLC as a label source.

`CorineSource` fetches the band `CLC` (legend index 1..44, 48 = no data) with evalscript `corine_v1`, newest edition
up to the tile's end date (`mostRecent` mosaicking), on the tile's own grid. Requests, retries (429/5xx/timeouts,
one HTTP policy), the response cache and credentials are those of `SentinelHubStore`, which it extends.

- `CorineSource.corine_codes(tile)`: CLC level-3 codes — the `harmonized_corine` and `only_corine` fusion modes.
- `CorineLabelSource.rasterize(tile)`: CLC mapped onto a label set through its `corine_codes` — `labels.source:
  corine` (`lulc_core.labelling.label_tiles` writes, caches and resumes it like any label source).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import sentinelhub as sh

from lulc_core.config import RunConfig, SentinelHubConfig
from lulc_core.corine import CORINE_COLLECTION_ID, codes_of, corine_lookup
from lulc_core.geo import Tile
from lulc_core.imagery.sentinelhub import ENDPOINTS, SentinelHubStore
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster

CORINE_SERVICE_URL = "https://creodias.sentinel-hub.com"
CORINE_FIRST_EDITION = date(1986, 1, 1)
_LOCK = threading.Lock()


class CorineSource(SentinelHubStore):
    """CORINE Land Cover on a tile's grid from Sentinel Hub's BYOC collection.

    Args:
        cfg: Sentinel Hub settings; `byoc_corine_collection` is the collection id (default: the public one).
        cache_dir: response cache directory (None: no cache).
        credentials: (client id, secret); default from the environment.
        service_url: deployment serving the collection (default: CreoDIAS for the commercial endpoint with its
            default URL, else `cfg.base_url`).

    Raises:
        ConfigError: missing credentials.
    """

    def __init__(
        self,
        cfg: SentinelHubConfig,
        cache_dir: Path | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        service_url: str | None = None,
    ) -> None:
        # resolution is informational: CORINE is fetched on each tile's own grid
        super().__init__(cfg, 10.0, cache_dir, credentials=credentials, evalscript="corine_v1")
        if service_url is None:
            default = self.endpoint.base_url == ENDPOINTS["sentinelhub"].base_url
            service_url = CORINE_SERVICE_URL if default else self.endpoint.base_url
        self.collection_id = cfg.byoc_corine_collection or CORINE_COLLECTION_ID
        self.service_url = service_url.rstrip("/")
        tag = hashlib.sha1(f"{self.collection_id}@{self.service_url}".encode()).hexdigest()[:8].upper()
        with _LOCK:
            self.collection = sh.DataCollection.define_byoc(
                self.collection_id, name=f"LULC_CORINE_{tag}", service_url=self.service_url
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.service_url!r}, collection={self.collection_id!r})"

    @property
    def cache_key(self) -> str:
        """Identity of the source in label cache keys."""
        return f"corine:{self.collection_id}@{self.service_url}"

    def _input_data(self, tile: Tile) -> dict[str, Any]:
        return {
            "corine": sh.SentinelHubRequest.input_data(
                self.collection,
                identifier="corine",
                time_interval=(CORINE_FIRST_EDITION, tile.end),
                mosaicking_order=sh.MosaickingOrder.MOST_RECENT,
            )
        }

    def legend_index(self, tile: Tile, when: date | None = None) -> Raster:
        """The CLC band (uint8 legend index 1..44, 0 = no data) on the tile grid, newest edition up to `when`
        (default: `tile.end`).

        Raises:
            NotCoveredError: CORINE has no data for the tile (outside Europe or before the first edition).
            UpstreamError: Sentinel Hub still fails after the retries.
        """
        dated = tile if when is None else tile.model_copy(update={"end": when})
        raster = self.fetch(dated, ["CLC"])
        index = np.where(raster.valid_mask, np.nan_to_num(raster.data[0]), 0).astype(np.uint8)
        tags = {
            **raster.tags,
            "label_source": "corine",
            "corine_collection": self.collection_id,
            "date": str(dated.end),
        }
        return Raster(index[None], raster.transform, raster.crs, ["clc_index"], None, tags)

    def corine_codes(self, tile: Tile, when: date | None = None) -> Raster:
        """CLC level-3 codes (uint16, e.g. 311) on the tile grid from the newest edition up to `when` (default:
        `tile.end`); 0 where CORINE has no data.

        Raises:
            NotCoveredError: CORINE has no data for the tile (outside Europe or before the first edition).
            UpstreamError: Sentinel Hub still fails after the retries.
        """
        index = self.legend_index(tile, when)
        return Raster(codes_of(index.data[0])[None], index.transform, index.crs, ["clc_code"], None, index.tags)


class CorineLabelSource(CorineSource):
    """CORINE mapped onto a label set (`corine_codes` per class; unclaimed codes -> 0, `unknown`).

    Raises:
        ConfigError: the label set has no (or invalid) `corine_codes`; missing credentials.
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
        self.label_set = label_set
        self.lookup = corine_lookup(label_set)  # before any credentials or network: a config mistake first
        super().__init__(cfg, cache_dir, credentials=credentials, service_url=service_url)

    def __repr__(self) -> str:
        return f"CorineLabelSource({self.service_url!r}, label_set={self.label_set.name!r})"

    def rasterize(self, tile: Tile, when: date | None = None) -> Raster:
        """The class raster of `tile` (one uint8 band "class", 0 = unknown) from the newest edition up to `when`.

        Raises:
            NotCoveredError: CORINE has no data for the tile.
            UpstreamError: Sentinel Hub still fails after the retries.
        """
        index = self.legend_index(tile, when)
        tags = {**index.tags, "LABEL_SET": self.label_set.name}
        return Raster(self.lookup[index.data[0]][None], index.transform, index.crs, ["class"], None, tags)


def build_corine_source(cfg: RunConfig, cache_dir: Path | None = None) -> CorineSource | None:
    """The CORINE source of the CORINE fusion modes: Sentinel Hub's BYOC collection when
    `imagery.sentinelhub.byoc_corine_collection` is set, else None (those modes are then refused per request).

    Raises:
        ConfigError: the collection is set but Sentinel Hub credentials are missing.
    """
    if not cfg.imagery.sentinelhub.byoc_corine_collection:
        return None
    return CorineSource(cfg.imagery.sentinelhub, cache_dir)
