"""`lulc demo` and `lulc run`: the main job end to end."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the top-level run commands to `app`."""
