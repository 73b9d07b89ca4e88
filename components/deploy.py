"""Step 8 — deploy: the promoted version as a KServe InferenceService (only reached when the gate passed)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(
    config: str,
    registration: Input[Artifact],
    target: str,
    namespace: str,
    image: str,
    gpus: int,
    report: Output[Markdown],
) -> str:
    """Apply the InferenceService for the registered version and wait until Ready; returns its URL.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        registration: registration.json of the register step.
        target: 'kserve' applies the InferenceService; 'none' and 'local' skip Kubernetes (a local run).
        namespace: Kubernetes namespace of the InferenceService.
        image: Project image of the predictor (pinned).
        gpus: nvidia.com/gpu per predictor replica (0 = CPU).
        report: What was deployed where, or why it was skipped.
    """
    import json
    from pathlib import Path

    from components._runtime import load_config
    from lulc_core.errors import InputError

    cfg = load_config(config)
    reg = json.loads(Path(registration.path).read_text())
    if target not in ("none", "local", "kserve"):
        raise InputError("deploy_target", f"{target!r} is not a deploy target", "use 'none', 'local' or 'kserve'")
    if target != "kserve":
        serve = f"lulc serve --model {reg['name']}@production"
        Path(report.path).write_text(
            f"# Deploy skipped (target '{target}')\n\n{reg['ref']} is in production; serve it with `{serve}`.\n"
        )
        return ""
    if not reg.get("storage_uri"):
        raise InputError(
            "registry", f"{reg['ref']} has no storage URI", "set registry.artifact_root: s3://bucket/prefix (MLflow)"
        )
    from serving.deploy import deploy as apply_isvc

    mode, version = cfg.serving.deployment_mode, cfg.serving.kserve_version  # named as manifests/base (ISVC_NAME)
    spec = {"namespace": namespace, "storage_uri": reg["storage_uri"], "image": image, "gpus": gpus}
    result = apply_isvc(spec | {"deployment_mode": mode, "kserve_version": version})  # invalid: InputError
    Path(report.path).write_text(
        f"# Deployed {reg['ref']}\n\n{result.action} `{namespace}/{result.name}` -> {result.url}\n"
    )
    return result.url
