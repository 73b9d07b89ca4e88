"""Shared pytest fixtures. Engineers add fixtures here with unique names; never rewrite others'."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample"
V3_LABELS = REPO / "conf" / "labels" / "v3.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"../shared/data is missing beside the repository (expected {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def v3_label_set():
    from lulc_core.labels import LabelSet

    return LabelSet.from_yaml(V3_LABELS)
