"""The GitHub workflows and the pre-commit configuration: linted by real tools (actionlint with shellcheck, the
GitHub workflow JSON schema, pre-commit's own validator) and checked for what they must do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} missing from the venv: `make venv` installs it (dev extras)"
    return str(path)


def _run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def _steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def test_workflow_files() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) >= ["ci.yml", "images.yml", "retrain.yml"]


def test_actionlint_passes() -> None:
    """actionlint (with shellcheck on PATH, so every `run:` script is shellchecked too)."""
    _tool("shellcheck")
    result = _run([_tool("actionlint"), "-no-color"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on:\n  pushh:\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
        "      - run: echo ${{ secrets.KFP_TOKEN.oops( }}\n"
    )
    result = _run([_tool("actionlint"), "-no-color", str(bad)], cwd=tmp_path)
    assert result.returncode != 0
    assert "pushh" in result.stdout  # unknown trigger
    assert ":8:" in result.stdout  # broken expression
    assert "potentially untrusted" in result.stdout  # script injection


def test_workflows_match_the_github_schema() -> None:
    files = [str(p) for p in sorted(WORKFLOWS.glob("*.yml"))]
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_rejects_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs_on: ubuntu-24.04\n    steps: []\n")
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)])
    assert result.returncode != 0


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(p) for p in (REPO / "scripts").glob("*.sh"))
    assert scripts
    result = _run([_tool("shellcheck"), *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_make_test_on_pushes_and_pull_requests() -> None:
    ci = _load("ci.yml")
    assert "push" in ci["on"] and "pull_request" in ci["on"]
    assert "pull_request_target" not in ci["on"], "never run PR code with repository secrets"
    assert any(step.get("run", "").startswith("make test") for step in _steps(ci))
    assert ci["permissions"] == {"contents": "read"}
    assert "secrets." not in (WORKFLOWS / "ci.yml").read_text(), "tests need no secrets (forks run them too)"
    # torch resolves to the CPU build, as in the CPU image.
    assert ci["env"]["TORCH_INDEX"].endswith("/whl/cpu")


def test_images_tagged_with_the_git_sha_never_latest() -> None:
    images = _load("images.yml")
    on = images["on"]
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"]
    assert "workflow_call" in on, "retrain.yml builds this commit's image first"
    text = (WORKFLOWS / "images.yml").read_text()
    assert "latest" not in text.replace("never `latest`", "")
    assert ":${GITHUB_SHA}${SUFFIX}" in text
    build = next(s for s in _steps(images) if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["push"] is True and build["with"]["target"] == "runtime"
    assert "TORCH_INDEX=https://download.pytorch.org/whl/${{ matrix.torch_variant }}" in build["with"]["build-args"]
    assert "GIT_SHA=${{ github.sha }}" in build["with"]["build-args"]
    assert "exists" in build["if"], "an existing SHA tag is never rebuilt (immutable tags)"


def test_retrain_triggers_and_secrets() -> None:
    retrain = _load("retrain.yml")
    on = retrain["on"]
    assert on["push"]["paths"] == ["conf/**"]
    assert on["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in on
    (cron,) = (entry["cron"] for entry in on["schedule"])
    assert len(cron.split()) == 5
    assert retrain["concurrency"]["cancel-in-progress"] is False
    assert retrain["jobs"]["images"]["uses"] == "./.github/workflows/images.yml"
    job = retrain["jobs"]["retrain"]
    assert job["needs"] == "images"
    assert job["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert job["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    assert "continue-on-error" not in job and all("continue-on-error" not in s for s in job["steps"])


def test_retrain_runs_the_tested_script() -> None:
    """The workflow runs scripts/retrain.sh — the very command the retrain test runs against the KFP stand-in."""
    job = _load("retrain.yml")["jobs"]["retrain"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any(r.strip().endswith("scripts/retrain.sh") for r in runs)
    assert "LULC_IMAGE=" in "\n".join(runs) and "${GITHUB_SHA}" in "\n".join(runs)
    assert os.access(REPO / "scripts" / "retrain.sh", os.X_OK), "the workflow runs scripts/retrain.sh directly"
    script = (REPO / "scripts" / "retrain.sh").read_text()
    args = re.search(r"^args=\((.*?)\)$", script, re.M | re.S)
    assert args and "--wait" in args.group(1) and '--host "$KFP_HOST"' in args.group(1)
    assert re.search(r'^lulc pipeline submit "\$\{args\[@\]\}"', script, re.M)


@pytest.mark.parametrize("name", ["ci.yml", "images.yml", "retrain.yml"])
def test_secrets_never_inline_in_scripts(name: str) -> None:
    """Secrets reach scripts through env, never `${{ secrets.X }}` inside `run:` (no injection, no echo)."""
    doc = _load(name)
    for step in _steps(doc):
        assert "secrets." not in step.get("run", ""), f"{name}: step {step.get('name')} inlines a secret"
        assert "set -x" not in step.get("run", ""), f"{name}: set -x would print secrets"


@pytest.mark.parametrize("name", ["ci.yml", "images.yml", "retrain.yml"])
def test_checkout_does_not_persist_credentials(name: str) -> None:
    for step in _steps(_load(name)):
        if str(step.get("uses", "")).startswith("actions/checkout"):
            assert step.get("with", {}).get("persist-credentials") is False


# ---------------------------------------------------------------------------------------------------------------
# pre-commit


def test_pre_commit_config() -> None:
    path = REPO / ".pre-commit-config.yaml"
    result = _run([_tool("pre-commit"), "validate-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    hooks = {hook["id"]: (repo["repo"], repo["rev"]) for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "check-yaml", "end-of-file-fixer", "trailing-whitespace"} <= set(hooks)
    assert "detect-private-key" in hooks
    ruff_pin = re.search(r"^ruff==(\S+)$", (REPO / "requirements.lock").read_text(), re.M)
    assert ruff_pin and hooks["ruff-check"][1] == f"v{ruff_pin.group(1)}", "pre-commit's ruff = the locked ruff"


# ---------------------------------------------------------------------------------------------------------------
# The gate report of a retraining run (scripts/gate_report.py, called by scripts/retrain.sh)

GATE_REPORT = REPO / "scripts" / "gate_report.py"


def _version(version: int, created: str, passed: str | None, name: str = "lulc-segformer") -> dict[str, Any]:
    tags = {"lulc.lineage.code_version": "abc"}
    if passed is not None:
        tags |= {
            "lulc.gate.passed": passed,
            "lulc.gate.candidate_miou": "0.61",
            "lulc.gate.min_miou": "0.5",
            "lulc.gate.production_miou": "0.58",
            "lulc.gate.production_version": "2",
            "lulc.gate.reasons": "mIoU 0.6100 meets the threshold 0.5000 | mIoU 0.6100 is not worse than production 2",
        }
    return {"name": name, "version": version, "backend": "mlflow", "created_at": created, "tags": tags}


def _gate_report(versions: Any, *args: str) -> subprocess.CompletedProcess[str]:
    stdin = versions if isinstance(versions, str) else json.dumps(versions)
    return subprocess.run(
        [sys.executable, str(GATE_REPORT), *args], input=stdin, capture_output=True, text=True, timeout=30
    )


def test_gate_report_passed_appends_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    versions = [_version(3, "2026-01-15T05:00:00+00:00", "true"), _version(2, "2026-01-01T00:00:00+00:00", "true")]
    result = _gate_report(versions, "--since", "2026-01-15T03:17:00Z", "--run", "run-1", "--summary", str(summary))
    assert result.returncode == 0, result.stderr
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "quality gate passed" in text
    assert "`lulc-segformer@3`" in text and "| candidate test mIoU | 0.61 |" in text
    assert "| production test mIoU | 0.58 |" in text and "- mIoU 0.6100 meets the threshold 0.5000" in text


def test_gate_report_rejected_fails() -> None:
    versions = [_version(4, "2026-01-15T05:00:00+00:00", "false"), _version(3, "2026-01-15T04:00:00+00:00", "true")]
    result = _gate_report(versions, "--since", "2026-01-15T03:17:00+00:00")
    assert result.returncode == 1
    assert "**rejected**" in result.stdout and "@4" in result.stdout


@pytest.mark.parametrize(
    ("versions", "args"),
    [
        ([], ()),
        ([_version(2, "2026-01-15T03:00:00+00:00", "true")], ()),  # older than the submission (past the skew)
        ([_version(5, "2026-01-15T05:00:00+00:00", "true", name="other-model")], ("--model", "lulc-segformer")),
        ([_version(5, "2026-01-15T05:00:00+00:00", None)], ()),  # registered but no gate decision
    ],
)
def test_gate_report_without_a_decision_fails(versions: list[dict[str, Any]], args: tuple[str, ...]) -> None:
    result = _gate_report(versions, "--since", "2026-01-15T03:17:00+00:00", *args)
    assert result.returncode == 3, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("stdin", "since", "message"),
    [
        ("not json", "2026-01-15T03:17:00Z", "not the JSON"),
        ('{"a": 1}', "2026-01-15T03:17:00Z", "JSON list"),
        ("[]", "yesterday", "not an ISO 8601 time"),
        ("[]", "2026-01-15T03:17:00", "no time zone"),
    ],
)
def test_gate_report_bad_input(stdin: str, since: str, message: str) -> None:
    result = _gate_report(stdin, "--since", since)
    assert result.returncode == 2
    assert message in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Retraining: scripts/retrain.sh — the very command retrain.yml runs — against the KFP API stand-in, with the real
# kfp.Client inside `lulc pipeline submit` and the real MLflow registry (SQLite) the pipeline registers into.

RETRAIN = REPO / "scripts" / "retrain.sh"
CANARY_TOKEN = "kfp-canary-token-5d1e8a"  # pragma: allowlist secret
IMAGE_SHA = "ghcr.io/lulc/lulc:89ab01cd89ab01cd89ab01cd89ab01cd89ab01cd"


def _retrain_config(tmp_path: Path) -> Path:
    """conf/run.yaml with its work dir in tmp_path (paths made absolute, so the file can live anywhere)."""
    from lulc_core.config import load_run_config

    cfg = load_run_config(REPO / "conf" / "run.yaml").model_copy(update={"work_dir": tmp_path / "work"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def _register_like_the_pipeline(config: Path, bundle: Path, min_miou: float) -> None:
    """What the pipeline's register step does in the cluster: register the bundle, then apply the gate."""
    from lulc_core.config import GateConfig, load_run_config
    from lulc_core.registry import RegistrationInfo, build_registry
    from lulc_core.registry.gate import apply_gate

    cfg = load_run_config(config)
    registry = build_registry(cfg.registry, cfg.work_dir)
    ref = registry.register(bundle, RegistrationInfo(description="retrain test"))
    apply_gate(registry, ref, GateConfig(min_miou=min_miou))


def _run_retrain(env_extra: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    summary = tmp_path / "summary.md"
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),  # kfp.Client reads ~/.config/kfp/context.json
        "LULC_IMAGE": IMAGE_SHA,
        "LULC_POLL_INTERVAL": "0.05",
        "LULC_TIMEOUT_S": "60",
        "GITHUB_STEP_SUMMARY": str(summary),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **env_extra,
    }
    result = subprocess.run(["bash", str(RETRAIN)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    return result, summary.read_text() if summary.exists() else ""


@pytest.mark.slow
def test_retrain_fails_when_the_gate_rejects(
    tmp_path: Path, registry_tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submit, wait, read the gate: the run succeeds but the model (test mIoU 0.42) misses min_miou 0.9.

    (The promoted path differs only in gate_report's verdict, tested above; one full run keeps this test short.)
    """
    kfp_api = pytest.importorskip("standins.kfp_api", reason="the KFP API stand-in has not landed yet")
    config = _retrain_config(tmp_path)
    # The "pipeline" (the hook below, in this process) registers into the store the script reads.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    class PipelineCluster(kfp_api.KfpApiStandIn):  # type: ignore[name-defined,misc]
        """The stand-in whose run, while RUNNING, registers the model as the pipeline's register step does."""

        registered = False

        def _get_run(self, run_id: str) -> tuple[int, dict[str, Any]]:
            code, run = super()._get_run(run_id)
            if run.get("state") == "RUNNING" and not self.registered:
                self.registered = True
                _register_like_the_pipeline(config, registry_tiny_bundle, min_miou=0.9)
            return code, run

    with PipelineCluster(token=CANARY_TOKEN, running_polls=2) as api:
        result, summary = _run_retrain(
            {"KFP_HOST": api.url, "KFP_TOKEN": CANARY_TOKEN, "LULC_CONFIG": str(config)}, tmp_path
        )
        assert api.registered, result.stderr
        (run,) = api.runs.values()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "quality gate **rejected**" in summary and "not promoted" in summary
    assert "| candidate test mIoU | 0.42 |" in summary and "| threshold: min mIoU | 0.9 |" in summary
    assert "- mIoU 0.4200 is below the threshold 0.9000" in summary
    assert f"/#/runs/details/{run['run_id']}" in summary
    # What was submitted: this commit's image, the rollout target, the deploy RBAC, in the named experiment.
    assert run["runtime_config"]["parameters"] == {"deploy_target": "kserve"}
    assert run["service_account"] == "lulc-pipeline"
    assert IMAGE_SHA in json.dumps(run["pipeline_spec"])
    # The token authenticated every request and appears nowhere in what the job prints or records.
    assert CANARY_TOKEN not in result.stdout + result.stderr + summary


@pytest.mark.slow
def test_retrain_fails_when_the_run_fails(tmp_path: Path) -> None:
    kfp_api = pytest.importorskip("standins.kfp_api", reason="the KFP API stand-in has not landed yet")
    config = _retrain_config(tmp_path)
    with kfp_api.KfpApiStandIn(token=CANARY_TOKEN, running_polls=1, final_state="FAILED") as api:
        result, summary = _run_retrain(
            {"KFP_HOST": api.url, "KFP_TOKEN": CANARY_TOKEN, "LULC_CONFIG": str(config)}, tmp_path
        )
        assert len(api.runs) == 1
    assert result.returncode not in (0, 3), result.stdout + result.stderr
    assert "finished FAILED" in result.stderr + result.stdout
    assert "## Retraining: the pipeline run failed" in summary and "FAILED" in summary
    assert CANARY_TOKEN not in result.stdout + result.stderr + summary


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "KFP_HOST is not set"),
        ({"KFP_HOST": "http://127.0.0.1:9", "LULC_CONFIG": "conf/nope.yaml"}, "does not exist"),
        ({"KFP_HOST": "http://127.0.0.1:9", "LULC_CONFIG": "conf/run.yaml", "MLFLOW_TRACKING_URI": ""}, "or registry"),
        # conf/cluster.yaml (the default) names the in-cluster MLflow: CI must be told its external address
        ({"KFP_HOST": "http://127.0.0.1:9", "MLFLOW_TRACKING_URI": ""}, "in-cluster MLflow server, unreachable"),
    ],
)
def test_retrain_refuses_before_submitting(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result, _ = _run_retrain(env, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
