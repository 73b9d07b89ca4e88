"""Access to ../shared (schemas and recorded data that live beside the repository, not in it).

CI lays ../shared beside the checkout and sets LULC_REQUIRE_SHARED=1 (.ci/run), so there a missing file is a
failure. A user's clone has nothing beside it: there a test that needs ../shared skips with a one-line reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REQUIRE_ENV = "LULC_REQUIRE_SHARED"


def shared_path(*parts: str) -> Path:
    """`../shared/<parts>`, or skip the calling test (fail where LULC_REQUIRE_SHARED is set) when it is missing."""
    path = SHARED.joinpath(*parts)
    if path.exists():
        return path
    reason = f"needs ../shared/{'/'.join(parts)} beside the repository (absent in a plain clone)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set")
    pytest.skip(reason)
