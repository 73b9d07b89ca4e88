"""`lulc` — commands that mirror the platform's steps.

Command groups live in `lulc/commands/`; each calls lulc_core directly and imports kfp, kserve or kubernetes
only inside the command that needs them, so `lulc --help` stays fast and `import lulc_core` stays light.
"""

from __future__ import annotations

import logging
import sys

import typer

from lulc.commands import data, model, pipeline, registry, run, serve
from lulc_core.errors import InputError, LulcError, NotFoundError

app = typer.Typer(
    name="lulc",
    help="Train, register and serve land-use/land-cover segmentation models from satellite imagery and OSM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(model.app, name="model")
app.add_typer(registry.app, name="registry")
app.add_typer(pipeline.app, name="pipeline")
run.register(app)
serve.register(app)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def main() -> None:
    """Entry point: LulcError becomes a one-line message and a non-zero exit code (2 for bad input)."""
    try:
        app()
    except InputError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except NotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(3)
    except LulcError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(1)


if __name__ == "__main__":
    main()
