"""`lulc pipeline` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="pipeline commands.", no_args_is_help=True)
