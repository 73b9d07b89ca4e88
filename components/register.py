"""Step 7 — register: the evaluated bundle becomes a registry version; the quality gate decides promotion."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    config: str,
    bundle: Input[Model],
    evaluation: Input[Dataset],
    registration: Output[Artifact],
    report: Output[Markdown],
) -> bool:
    """Register always; promote to production only when the gate passes. Returns whether it passed.

    Args:
        config: The whole RunConfig JSON (registry, gate thresholds; recorded with the model for lineage).
        bundle: The evaluated bundle (metrics in lulc.json).
        evaluation: The evaluation directory (metrics.json).
        registration: registration.json: ref, version, uri, storage_uri, gate decision.
        report: The gate decision and its numbers.
    """
    import json
    import tempfile
    from pathlib import Path

    from components._report import md_table
    from components._runtime import copy_dir, load_config
    from lulc_core.evaluation import EvaluationReport
    from lulc_core.lineage import record_run_config
    from lulc_core.registry import apply_gate, build_registry, registration_info

    cfg = load_config(config)
    rep = EvaluationReport.model_validate_json((Path(evaluation.path) / "metrics.json").read_text())
    registry = build_registry(cfg.registry, cfg.work_dir)
    with tempfile.TemporaryDirectory(prefix="lulc-register-") as tmp:  # the bundle with the whole configuration
        bundle_dir = record_run_config(copy_dir(bundle.path, Path(tmp) / "bundle"), cfg)
        ref = registry.register(bundle_dir, registration_info(cfg, rep))
    decision = apply_gate(registry, ref, cfg.registry.gate)
    version = registry.get(ref)
    record = {
        "ref": f"{version.name}@{version.version}",
        "name": version.name,
        "version": version.version,
        "backend": version.backend,
        "uri": version.uri,
        "storage_uri": version.storage_uri,
        "passed": decision.passed,
        "reasons": decision.reasons,
    }
    Path(registration.path).write_text(json.dumps(record, indent=2))
    registration.metadata.update({k: v for k, v in record.items() if k != "reasons"})
    numbers = md_table(["number", "value"], [(k, v) for k, v in decision.numbers.model_dump().items() if v is not None])
    verdict = "promoted to **production**" if decision.passed else "**not** promoted"
    reasons = "\n".join(f"- {r}" for r in decision.reasons)
    Path(report.path).write_text(f"# {record['ref']} ({version.backend})\n\nGate: {verdict}\n\n{reasons}\n\n{numbers}")
    return bool(decision.passed)
