"""CORINE Land Cover (CLC): the legend, and how CLC codes become a label set's classes.

CLC (editions 1990-2018, 100 m, Europe) is served by Sentinel Hub as a BYOC collection whose band `CLC` holds the
legend index 1..44 (48 = no data); `lulc_core.imagery.corine` fetches it. This module is the light part every
entry point shares, without any download client:

- the official level-3 legend (codes, names, colours) from `lulc_core/data/clc_legend.csv` (EEA, attributed there);
- `corine_lookup`: legend index -> a label set's raster value through each class's `corine_codes` (codes no class
  claims become 0, `unknown`) — the `corine` label source and the `harmonized_corine` fusion mode;
- `corine_legend`: the raw CLC classes as a label set (raster value = legend index), so that `only_corine`
  predictions carry the CLC colours and names in the GeoTIFF colour table, the PNG legend and the API answers;
- `check_corine_config`: the one configuration check of a CORINE run (collection, credentials, label set).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from lulc_core.errors import ConfigError, InputError
from lulc_core.labels import LabelClass, LabelSet

if TYPE_CHECKING:
    from lulc_core.config import RunConfig

LEGEND_FILE = Path(__file__).resolve().parent / "data" / "clc_legend.csv"
CORINE_COLLECTION_ID = "cbdba844-f86d-41dc-95ad-b3f7f12535e9"
"""Sentinel Hub's public CORINE Land Cover BYOC collection (CreoDIAS deployment)."""
NODATA_INDEX = 48
LEGEND_NAME = "corine_clc"


@dataclass(frozen=True)
class ClcClass:
    """One CLC level-3 class: legend index (the BYOC band value), code, official name and colour."""

    index: int
    code: int
    name: str
    color: str


def _read_legend(path: Path = LEGEND_FILE) -> tuple[ClcClass, ...]:
    with path.open(newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return tuple(ClcClass(i, int(r["code"]), r["name"], r["color"].upper()) for i, r in enumerate(rows, start=1))


CLC_CLASSES = _read_legend()
CLC_LEGEND = tuple(c.code for c in CLC_CLASSES)
"""CLC level-3 codes in legend order: band value i (1..44) is CLC_LEGEND[i - 1]."""


class LegendClass(LabelClass):
    """A class of a legend that is not selected from OSM (the raw CORINE classes): no `osm_filter`."""

    osm_filter: str | None = Field(  # type: ignore[assignment]
        default=None, alias="filter", description="Not used: the class comes from CORINE, not OSM."
    )
    code: int = Field(description="CORINE level-3 code, e.g. 311 (broad-leaved forest).")


@functools.cache
def corine_legend() -> LabelSet:
    """The raw CLC classes as a label set: raster value i is legend index i, named `<code> <name>`."""
    classes = [
        LegendClass.model_validate({"name": f"{c.code} {c.name}", "color": c.color, "code": c.code})
        for c in CLC_CLASSES
    ]
    return LabelSet(name=LEGEND_NAME, classes=list(classes))


def corine_lookup(label_set: LabelSet) -> np.ndarray:
    """A 256-entry table from CLC legend index to the label set's raster value (0 where unmapped).

    Raises:
        ConfigError: a code that is not a CLC level-3 code, one claimed by two classes, or no `corine_codes` at all.
    """
    table = np.zeros(256, np.uint8)
    owner: dict[int, str] = {}
    for value, cls in enumerate(label_set.classes, start=1):
        for code in cls.corine_codes:
            if code not in CLC_LEGEND:
                raise ConfigError(
                    f"label_set {label_set.name}: {cls.name}.corine_codes",
                    f"{code} is not a CORINE level-3 code",
                    "use codes like 111, 211, 311 (the CORINE Land Cover legend, see docs/corine.md)",
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
        raise ConfigError(
            "labels.label_set",
            f"label set {label_set.name!r} has no corine_codes, so CORINE cannot be mapped onto its classes",
            "add `corine_codes: [...]` (CLC level-3 codes) to its classes, as conf/labels/v3.yaml does",
        )
    return table


def codes_of(index: np.ndarray) -> np.ndarray:
    """CLC level-3 codes (uint16) of legend indices; 0 where the index is no data (0, 48 or out of range)."""
    table = np.zeros(256, np.uint16)
    table[1 : len(CLC_LEGEND) + 1] = CLC_LEGEND
    return table[np.clip(index, 0, 255).astype(np.uint8)]


def legend_values(codes: np.ndarray) -> np.ndarray:
    """Legend indices 1..44 (uint8, the `corine_legend` raster values) of CLC codes; 0 for anything else."""
    out = np.zeros(codes.shape, np.uint8)
    for c in CLC_CLASSES:
        out[codes == c.code] = c.index
    return out


def harmonize_corine(codes: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """CLC codes -> the label set's raster values via `corine_lookup` (unmapped codes -> 0)."""
    return corine_lookup(label_set)[legend_values(codes)]


def check_corine_config(cfg: RunConfig, *, credentials: bool = True) -> None:
    """Refuse a CORINE run that cannot work, before any step starts, in one line naming the field and the fix.

    Checks (when `labels.source` is corine): the label set maps CLC codes (`corine_codes`), and — with
    `credentials` — that Sentinel Hub OAuth credentials are in the environment. The BYOC collection id is checked
    by the RunConfig validator.

    Raises:
        ConfigError: the field and the fix.
    """
    if cfg.labels.source != "corine":
        return
    corine_lookup(LabelSet.from_yaml(cfg.labels.label_set))
    if credentials:
        from lulc_core.imagery.sentinelhub import credentials_from_env

        try:
            credentials_from_env()
        except ConfigError as exc:
            raise ConfigError(
                exc.field, f"labels.source corine reads CORINE from Sentinel Hub: {exc.message}", exc.fix
            ) from None


def require_corine_codes(label_set: LabelSet) -> None:
    """InputError (field fusion_mode) when a model's label set cannot take harmonised CORINE."""
    try:
        corine_lookup(label_set)
    except ConfigError as exc:
        raise InputError(
            "fusion_mode",
            f"harmonized_corine maps CORINE onto the model's label set, but {exc.message}",
            "use fusion_mode only_corine (the raw CORINE classes), or a model whose label set has corine_codes",
        ) from None
