"""Security of what we ship: no secret in the repository tree, the image or the manifests; containers non-root with
a read-only root filesystem and no capabilities; a NetworkPolicy for the predictor; a valid pip-audit allowlist."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_checks import parse_dockerfile, secret_object_problems, stages, workload_security_problems

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
AUDIT = REPO / "scripts" / "audit.sh"

# High-confidence shapes of real credentials. A line may opt out with "pragma: allowlist secret" (detect-secrets'
# convention) when it holds a deliberately fake value, e.g. in a stand-in server.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY( BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Neptune API token": re.compile(r"\beyJhcGlfYWRkcmVzcyI6[A-Za-z0-9+/=]{20,}"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{15,}\.eyJ[A-Za-z0-9_-]{15,}\.[A-Za-z0-9_-]{20,}"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"$<{]{6,}@[\w.-]+"),
    "secret assignment": re.compile(
        r"\b[\w-]*(?i:password|passwd|secret|api[_-]?key|access[_-]?key|token)[\w-]*\b[\"']?\s*[:=]\s*[\"']"
        r"(?!\$\{|<|\{\{|[A-Z0-9_]+[\"'])(?=[^\"']*\d)(?=[^\"']*[A-Za-z])([A-Za-z0-9+/_\-]{24,})[\"']"
    ),
}
ALLOW = "pragma: allowlist secret"


def _repo_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    files = []
    for rel in filter(None, out.split("\0")):
        path = REPO / rel
        if path.is_file() and path.stat().st_size < 2_000_000 and path.suffix not in {".tif", ".png", ".pbf", ".onnx"}:
            files.append(path)
    return files


def find_secrets(text: str) -> list[tuple[int, str]]:
    """(line number, pattern name) for every credential-shaped string not marked as deliberately fake."""
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        if ALLOW in line:
            continue
        hits += [(n, name) for name, rx in SECRET_PATTERNS.items() if rx.search(line)]
    return hits


def test_no_secrets_in_repository_tree() -> None:
    files = _repo_text_files()
    assert len(files) > 20
    found = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(REPO)}:{n}: {name}" for n, name in find_secrets(text)]
    assert not found, "credential-shaped strings (mark deliberate fakes with 'pragma: allowlist secret'):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    "line",
    [
        "-----BEGIN OPENSSH PRIVATE KEY-----",  # pragma: allowlist secret
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",  # pragma: allowlist secret
        "token: ghp_" + "a1B2" * 9,
        "NEPTUNE_API_TOKEN='eyJhcGlfYWRkcmVzcyI6Imh0dHBzOi8vYXBwLm5lcHR1bmUuYWkiLCJhcGlfdXJsIjoi'",  # pragma: allowlist secret
        'client_secret = "' + "Zx8" * 10 + '"',
        "MLFLOW_TRACKING_URI=https://admin:hunter2hunter2@mlflow.example.org",  # pragma: allowlist secret
        "auth: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",  # pragma: allowlist secret
    ],
)
def test_secret_scan_catches(line: str) -> None:
    assert find_secrets(line), line


@pytest.mark.parametrize(
    "line",
    [
        "password: ${{ secrets.REGISTRY_PASSWORD }}",
        "KFP_TOKEN: ${KFP_TOKEN}",
        'token = os.environ["KFP_TOKEN"]',
        '"MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",',
        'name = "lulc-sentinelhub-credentials-for-training"',
        "secretKeyRef: {name: lulc-sentinelhub, key: SH_CLIENT_SECRET}",
        "ohsome_url: https://api.ohsome.org/v1",
        'client_secret = "' + "Zx8" * 10 + '"  # pragma: allowlist secret',
    ],
)
def test_secret_scan_ignores_references(line: str) -> None:
    assert not find_secrets(line), line


# ---------------------------------------------------------------------------------------------------------------
# Manifests (the serving engineer's kustomize tree), rendered per overlay


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _kustomizations() -> list[Path]:
    if not MANIFESTS.is_dir():
        return []
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.y*ml"))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    dirs = _kustomizations()
    if not dirs:
        pytest.skip("manifests/ has no kustomization yet (the serving engineer's); nothing to check")
    cmd = _kustomize()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed (Debian: kubectl) — cannot render the overlays")
    out = {}
    for d in dirs:
        text = subprocess.run([*cmd, str(d)], capture_output=True, text=True, check=True, timeout=60).stdout
        out[str(d.relative_to(MANIFESTS))] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def test_workloads_are_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    problems = []
    checked = 0
    for target, docs in rendered.items():
        for doc in docs:
            found = workload_security_problems(doc)
            checked += doc.get("kind") in {"InferenceService", "Deployment", "Job", "CronJob", "Pod", "StatefulSet"}
            problems += [f"{target}: {p}" for p in found]
    assert checked, "no workload found in the rendered manifests"
    assert not problems, "\n".join(problems)


def test_no_secret_values_in_manifests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    problems = [f"{t}: {p}" for t, docs in rendered.items() for doc in docs for p in secret_object_problems(doc)]
    assert not problems, "\n".join(problems)
    for target, docs in rendered.items():
        text = yaml.safe_dump_all(docs)
        assert not find_secrets(text), f"{target}: credential-shaped value in the rendered manifests"


def test_predictor_has_a_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        isvcs = [d for d in docs if d.get("kind") == "InferenceService"]
        if not isvcs:
            continue
        policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
        assert policies, f"{target}: no NetworkPolicy for the predictor"
        types = {t for p in policies for t in p["spec"].get("policyTypes", [])}
        assert {"Ingress", "Egress"} <= types, f"{target}: restrict both ingress and egress"


def test_manifests_run_the_image_uid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """runAsUser in the manifests is the UID the Dockerfile creates, so file ownership and runAsNonRoot agree."""
    final = stages(parse_dockerfile((REPO / "Dockerfile").read_text()))[-1]
    uid = int(next(i.args for i in reversed(final.instructions) if i.keyword == "USER").split(":")[0])
    uids = set()
    for docs in rendered.values():
        for doc in docs:
            if doc.get("kind") == "InferenceService":
                pred = doc["spec"]["predictor"]
                for c in pred.get("containers", []):
                    uids.add(
                        (c.get("securityContext") or {}).get(
                            "runAsUser", (pred.get("securityContext") or {}).get("runAsUser")
                        )
                    )
    uids.discard(None)
    assert uids <= {uid}, f"manifests run as {uids}, the image creates UID {uid}"


def _pod(container_sc: dict[str, Any] | None = None, pod_sc: dict[str, Any] | None = None, **extra: Any) -> dict:
    container: dict[str, Any] = {"name": "c", "image": "ghcr.io/lulc/lulc:0.1.0", **extra}
    if container_sc is not None:
        container["securityContext"] = container_sc
    return {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"securityContext": pod_sc or {}, "containers": [container]}}},
    }


GOOD_SC = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_pod(None), "runAsNonRoot"),
        (_pod({**GOOD_SC, "runAsNonRoot": False}), "runAsNonRoot"),
        (_pod({**GOOD_SC, "runAsUser": 0}), "runAsUser 0"),
        (_pod({**GOOD_SC, "readOnlyRootFilesystem": False}), "readOnlyRootFilesystem"),
        (_pod({k: v for k, v in GOOD_SC.items() if k != "allowPrivilegeEscalation"}), "allowPrivilegeEscalation"),
        (_pod({**GOOD_SC, "capabilities": {"drop": ["NET_RAW"]}}), "capabilities.drop"),
        (_pod({**GOOD_SC, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}), "capabilities.add"),
        (_pod({**GOOD_SC, "privileged": True}), "privileged"),
        (_pod(GOOD_SC, image="ghcr.io/lulc/lulc:latest"), "not pinned"),
        (_pod(GOOD_SC, image="ghcr.io/lulc/lulc"), "not pinned"),
        (_pod(GOOD_SC, env=[{"name": "KFP_TOKEN", "value": "abc"}]), "literal value"),
    ],
)
def test_workload_check_rejects(doc: dict, expected: str) -> None:
    problems = workload_security_problems(doc)
    assert any(expected in p for p in problems), problems


def test_workload_check_accepts_pod_level_non_root() -> None:
    sc = {k: v for k, v in GOOD_SC.items() if k != "runAsNonRoot"}
    env = [{"name": "SH_CLIENT_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert workload_security_problems(_pod(sc, {"runAsNonRoot": True, "runAsUser": 10001}, env=env)) == []


def test_secret_object_check() -> None:
    ok = {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"SH_CLIENT_SECRET": "<set out of band>"}}
    bad = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"token": "c2VjcmV0LXZhbHVl"}}
    assert secret_object_problems(ok) == []
    assert secret_object_problems(bad)


# ---------------------------------------------------------------------------------------------------------------
# pip-audit allowlist (the audit itself needs the network and runs in CI: `make audit`)


def _check_allowlist(path: Path, today: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "AUDIT_ALLOWLIST": str(path)}
    if today:
        env["AUDIT_TODAY"] = today
    return subprocess.run(["bash", str(AUDIT), "--check"], capture_output=True, text=True, env=env, timeout=30)


def test_real_allowlist_is_valid() -> None:
    result = _check_allowlist(REPO / ".ci" / "pip-audit-allowlist.txt")
    assert result.returncode == 0, result.stderr
    assert all(re.fullmatch(r"--ignore-vuln [A-Z]+-[\w-]+", line) for line in result.stdout.splitlines())


def test_allowlist_entry_becomes_an_ignore_flag(tmp_path: Path) -> None:
    expiry = (date.today() + timedelta(days=90)).isoformat()
    path = tmp_path / "allow.txt"
    path.write_text(f"# comment\n\nPYSEC-2024-99 | torch | {expiry} | torch.load is only used on bundles lulc wrote\n")
    result = _check_allowlist(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--ignore-vuln", "PYSEC-2024-99"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("PYSEC-2024-99 | torch | 2026-06-30", "needs a reason"),
        ("PYSEC-2024-99 | torch | 2026-06-30 | false positive", "needs a reason"),
        ("PYSEC-2024-99 | torch | 2026-02-30 | only used on our own bundles", "not a date"),
        ("PYSEC-2024-99 | torch | 30.06.2026 | only used on our own bundles", "not a date"),
        ("PYSEC-2024-99 | torch | 2025-12-31 | only used on our own bundles", "expired"),
        ("PYSEC-2024-99 | torch | 2028-01-01 | only used on our own bundles", "more than a year"),
        ("torch-is-fine | torch | 2026-06-30 | only used on our own bundles", "not a vulnerability id"),
        ("PYSEC-2024-99 | to rch | 2026-06-30 | only used on our own bundles", "not a package name"),
        ("PYSEC-2024-99 | torch | 2026-06-30 | a | b", "expected 4 fields"),
    ],
)
def test_allowlist_rejects_bad_entries(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "allow.txt"
    path.write_text(entry + "\n")
    result = _check_allowlist(path, today="2026-01-15")
    assert result.returncode != 0
    assert message in result.stderr and "allow.txt:1" in result.stderr


def test_allowlist_rejects_duplicates_and_missing_file(tmp_path: Path) -> None:
    line = "GHSA-2c3f-4g5h-6j7m | requests | 2026-06-30 | proxy credentials are never set by lulc\n"
    path = tmp_path / "allow.txt"
    path.write_text(line + line)
    result = _check_allowlist(path, today="2026-01-15")
    assert result.returncode != 0 and "listed twice" in result.stderr
    missing = _check_allowlist(tmp_path / "nope.txt")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_audit_covers_the_lock_and_the_torch_pin() -> None:
    result = subprocess.run(["bash", str(AUDIT), "--requirements"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    audited = set(result.stdout.split())
    lock = {x for x in (REPO / "requirements.lock").read_text().split() if "==" in x}
    assert lock <= audited
    assert "torch==2.13.0" in audited


def test_makefile_has_audit_target_and_ci_runs_it() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^audit:.*\n\tbash scripts/audit\.sh$", makefile, re.M)
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert "make audit" in runs


# ---------------------------------------------------------------------------------------------------------------
# The compiled pipeline (the pipeline engineer's compiler): secrets by reference only

CANARIES = {
    name: f"canary-{name.lower().replace('_', '-')}-7f3a9c21"
    for name in (
        "KFP_TOKEN",
        "SH_CLIENT_ID",
        "SH_CLIENT_SECRET",
        "NEPTUNE_API_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    )
}


def test_compiled_pipeline_holds_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials present in the compiling environment never reach the pipeline spec; secrets are referenced."""
    compile_mod = pytest.importorskip("pipelines.compile", reason="the pipeline compiler has not landed yet")
    from lulc_core.config import load_run_config

    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    cfg = load_run_config(REPO / "conf" / "run.yaml")
    image = "ghcr.io/lulc/lulc:0123456789abcdef0123456789abcdef01234567"
    text = Path(compile_mod.compile_pipeline(cfg, tmp_path / "pipeline.yaml", image=image)).read_text()
    leaked = sorted(name for name, value in CANARIES.items() if value in text)
    assert not leaked, f"the compiled pipeline contains the values of {leaked}"
    assert not find_secrets(text)
    assert "secretAsEnv" in text, "credentials reach the steps as Kubernetes Secret references"
    assert image in text and ":latest" not in text
