"""Optional roles: a command whose role is not installed fails in one line naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lulc_core.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]

# Run an entry point with some packages made unimportable (as in an install without their extra).
RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError, as when it is not installed
sys.argv = sys.argv[2:]
import runpy
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _run(blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN, blocked, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("kfp", ["lulc.cli", "pipeline", "compile", "-c", "conf/run.yaml", "-o", "/dev/null"], "pipeline"),
        ("mlflow", ["lulc.cli", "registry", "list", "-c", "conf/run.yaml"], "train"),
        ("kserve", ["serving", "--model-dir", "/nonexistent"], "serve"),
    ],
)
def test_missing_role_names_the_extra(blocked: str, args: list[str], extra: str, tmp_path: Path) -> None:
    result = _run(blocked, *args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith(f"pip install 'lulc[{extra}]'"), result.stderr
    assert "Traceback" not in result.stderr


def test_every_extra_named_in_messages_exists() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {extra for extra, _ in EXTRAS.values()} <= set(extras)
    assert set(extras) >= {"serve", "train", "pipeline", "neptune", "all", "dev"}
    core = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for role_only in ("lightning", "kfp", "neptune", "kserve", "mlflow"):
        assert role_only not in core, f"{role_only} is not a core dependency"
