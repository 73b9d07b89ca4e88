"""The quality gate: promote a model to production only when its test metrics are good enough.

Rules (GateConfig): the candidate's test mIoU and overall accuracy must reach `min_miou` / `min_accuracy`, and
when `must_beat_production` is set its mIoU must not be below the current production version's mIoU minus
`tolerance`. A candidate without a test mIoU never passes.

Test sets: the comparison with production is meant for metrics measured on the same test set. Each version
records a test-set fingerprint (`lulc.test_set`, a hash of the test tile ids). When the fingerprints differ or
one is unknown the gate still compares (the conservative choice: a model that *looks* worse is never promoted
automatically) and says so in `reasons`; promote by hand (`lulc registry promote`) after checking.

Models are always registered; the gate only decides promotion, and its decision with the numbers is recorded on
the version as tags (`lulc.gate.*`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from lulc_core.config import GateConfig
from lulc_core.errors import NotFoundError

if TYPE_CHECKING:
    from lulc_core.registry.base import ModelRef, ModelRegistry

log = logging.getLogger(__name__)

MIOU_KEYS = ("miou", "mIoU", "test_miou")
ACCURACY_KEYS = ("overall_accuracy", "accuracy", "test_overall_accuracy")
TAG_PREFIX = "lulc.gate."


class GateNumbers(BaseModel):
    """The numbers a gate decision was based on."""

    model_config = ConfigDict(extra="forbid")

    candidate_miou: float | None = Field(default=None, description="Candidate test mIoU.")
    candidate_accuracy: float | None = Field(default=None, description="Candidate test overall accuracy.")
    production_miou: float | None = Field(default=None, description="Current production test mIoU.")
    production_accuracy: float | None = Field(default=None, description="Current production overall accuracy.")
    production_version: str | None = Field(default=None, description="Version compared against.")
    min_miou: float = Field(description="Threshold on mIoU.")
    min_accuracy: float = Field(description="Threshold on overall accuracy.")
    tolerance: float = Field(description="Allowed mIoU drop versus production.")
    same_test_set: bool | None = Field(default=None, description="Test-set fingerprints equal (None: no production).")


class GateDecision(BaseModel):
    """Whether a candidate may be promoted to production, why, and the numbers."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    reasons: list[str] = Field(description="One sentence per rule checked (and notes).")
    numbers: GateNumbers

    def to_tags(self) -> dict[str, str]:
        """Flat string tags for a registry version (`lulc.gate.passed`, `lulc.gate.candidate_miou`, ...)."""
        tags = {TAG_PREFIX + "passed": str(self.passed).lower(), TAG_PREFIX + "reasons": " | ".join(self.reasons)}
        for key, value in self.numbers.model_dump().items():
            if value is not None:
                tags[TAG_PREFIX + key] = str(value).lower() if isinstance(value, bool) else str(value)
        return tags


def metric(metrics: Mapping[str, Any] | None, keys: tuple[str, ...]) -> float | None:
    """The first finite number among `keys` in `metrics`, else None."""
    for key in keys:
        value = (metrics or {}).get(key)
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def decide(
    candidate_metrics: Mapping[str, Any],
    production_metrics: Mapping[str, Any] | None,
    cfg: GateConfig,
    *,
    candidate_test_set: str | None = None,
    production_test_set: str | None = None,
    production_version: str | None = None,
) -> GateDecision:
    """Apply the gate rules of `cfg` to a candidate's test metrics and the production version's (if any)."""
    cand_miou = metric(candidate_metrics, MIOU_KEYS)
    cand_acc = metric(candidate_metrics, ACCURACY_KEYS)
    prod_miou = metric(production_metrics, MIOU_KEYS) if production_metrics is not None else None
    prod_acc = metric(production_metrics, ACCURACY_KEYS) if production_metrics is not None else None
    reasons: list[str] = []
    passed = True
    if cand_miou is None:
        passed = False
        reasons.append("candidate has no test mIoU: evaluate the model on the test split before the gate")
    elif cand_miou < cfg.min_miou:
        passed = False
        reasons.append(f"mIoU {cand_miou:.4f} is below the threshold {cfg.min_miou:.4f}")
    else:
        reasons.append(f"mIoU {cand_miou:.4f} meets the threshold {cfg.min_miou:.4f}")
    if cfg.min_accuracy > 0 or cand_acc is not None:
        if cand_acc is None:
            passed = False
            reasons.append(f"candidate has no overall accuracy but the threshold is {cfg.min_accuracy:.4f}")
        elif cand_acc < cfg.min_accuracy:
            passed = False
            reasons.append(f"overall accuracy {cand_acc:.4f} is below the threshold {cfg.min_accuracy:.4f}")
        else:
            reasons.append(f"overall accuracy {cand_acc:.4f} meets the threshold {cfg.min_accuracy:.4f}")
    same: bool | None = None
    if production_metrics is None:
        reasons.append("no production version yet: nothing to compare with")
    elif not cfg.must_beat_production:
        reasons.append("comparison with production disabled (must_beat_production: false)")
    elif prod_miou is None:
        reasons.append(f"production version {production_version} has no recorded mIoU: not compared")
    else:
        same = candidate_test_set is not None and candidate_test_set == production_test_set
        if not same:
            reasons.append(
                f"test sets differ or are unknown (candidate {candidate_test_set}, production "
                f"{production_test_set}): compared anyway, check by hand before promoting manually"
            )
        if cand_miou is not None and cand_miou < prod_miou - cfg.tolerance:
            passed = False
            reasons.append(
                f"mIoU {cand_miou:.4f} is worse than production version {production_version} "
                f"({prod_miou:.4f}, tolerance {cfg.tolerance:.4f})"
            )
        elif cand_miou is not None:
            reasons.append(f"mIoU {cand_miou:.4f} is not worse than production {production_version} ({prod_miou:.4f})")
    numbers = GateNumbers(
        candidate_miou=cand_miou,
        candidate_accuracy=cand_acc,
        production_miou=prod_miou,
        production_accuracy=prod_acc,
        production_version=production_version,
        min_miou=cfg.min_miou,
        min_accuracy=cfg.min_accuracy,
        tolerance=cfg.tolerance,
        same_test_set=same,
    )
    return GateDecision(passed=passed, reasons=reasons, numbers=numbers)


def apply_gate(registry: ModelRegistry, ref: str | ModelRef, cfg: GateConfig, *, promote: bool = True) -> GateDecision:
    """Decide for the version `ref`, record the decision on it, and promote it to production when it passes."""
    from lulc_core.registry.base import ModelRef

    candidate = registry.get(ref)
    try:
        production = registry.get(ModelRef(name=candidate.name, alias="production"))
    except NotFoundError:
        production = None
    is_production = production is not None and production.version == candidate.version
    if is_production:
        production = None
    decision = decide(
        candidate.metrics,
        production.metrics if production else None,
        cfg,
        candidate_test_set=candidate.test_set,
        production_test_set=production.test_set if production else None,
        production_version=str(production.version) if production else None,
    )
    if is_production:
        decision.reasons[-1] = "the candidate is the current production version: nothing to compare with"
    version_ref = ModelRef(name=candidate.name, version=candidate.version)
    registry.set_tags(version_ref, decision.to_tags())
    if decision.passed and promote:
        registry.promote(version_ref, "production")
    log.info(
        "gate %s for %s: %s", "passed" if decision.passed else "rejected", version_ref, "; ".join(decision.reasons)
    )
    return decision
