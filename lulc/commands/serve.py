"""`lulc serve` and `lulc predict`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the serving commands to `app`."""
