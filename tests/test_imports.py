"""lulc_core must stay the domain: no kfp, kserve, kubernetes, mlflow, neptune or boto3 at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN_ANYWHERE = {"kfp", "kserve", "kubernetes"}
FORBIDDEN_AT_MODULE_LEVEL = {"mlflow", "neptune", "boto3"}
# rasterio itself imports boto3 when it is installed (for S3 sessions), so boto3 is checked only in our sources.
RUNTIME_FORBIDDEN = FORBIDDEN_ANYWHERE | {"mlflow", "neptune"}
CORE = Path(__file__).resolve().parents[1] / "lulc_core"


def _imports(tree: ast.AST, module_level_only: bool) -> list[tuple[str, int]]:
    nodes = tree.body if module_level_only and isinstance(tree, ast.Module) else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def test_lulc_core_sources_import_no_platform_clients() -> None:
    offences = []
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imports(tree, module_level_only=False):
            if name in FORBIDDEN_ANYWHERE:
                offences.append(f"{path.relative_to(CORE.parent)}:{line} imports {name}")
        for name, line in _imports(tree, module_level_only=True):
            if name in FORBIDDEN_AT_MODULE_LEVEL:
                offences.append(f"{path.relative_to(CORE.parent)}:{line} imports {name} at module level")
    assert not offences, "\n".join(offences)


def test_importing_every_core_module_loads_no_platform_client() -> None:
    modules = sorted(
        ".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__") for p in CORE.rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(RUNTIME_FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "", f"importing lulc_core loaded: {out.stdout.strip()}"
