"""`lulc` — commands that mirror the platform's steps.

Command groups live in `lulc/commands/`; each calls lulc_core directly and imports kfp, kserve or kubernetes
only inside the command that needs them, so `lulc --help` stays fast and `import lulc_core` stays light.
"""

from __future__ import annotations

import difflib
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import typer
import yaml
from pydantic import BaseModel

from lulc.commands import data, model, pipeline, registry, run, serve
from lulc.commands import map as map_cmd
from lulc_core.config import RunConfig
from lulc_core.errors import InputError, LulcError, NotFoundError
from lulc_core.extras import missing_extra
from lulc_core.legacy_env import apply_legacy_env
from lulc_core.logs import StderrHandler
from lulc_core.redaction import install_redaction, redact

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
app.add_typer(map_cmd.app, name="map")
run.register(app)
serve.register(app)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[StderrHandler()], force=True
    )
    install_redaction()  # client libraries log credentials at DEBUG (e.g. the OAuth token request body)
    for notice in apply_legacy_env():  # the original lulc-utility's variable names (SENTINELHUB_API_ID, ...)
        logging.getLogger("lulc").warning(notice)


# Exit codes of `lulc`: bad input 2, something named does not exist 3, other lulc errors and I/O errors 1,
# interrupted 130 (Ctrl-C) or 143 (SIGTERM); files being written are removed (raster.atomic_path), so a re-run resumes.
EXIT_INPUT, EXIT_NOT_FOUND, EXIT_ERROR, EXIT_INT, EXIT_TERM = 2, 3, 1, 130, 143
BBOX_FIX = "give W,S,E,N in degrees, e.g. --bbox 9.835,57.222,9.850,57.230"
log = logging.getLogger("lulc")


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that `finally` blocks run (temporary files are removed).

    Not a KeyboardInterrupt, which typer would turn into a silent exit, nor an Exception, which code may catch.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _allowed_keys(path: list[str]) -> list[str] | None:
    """The keys a run-config section takes, following `path` (e.g. ['imagery', 'sentinelhub']) from RunConfig."""
    model: Any = RunConfig
    for key in path:
        field = model.model_fields.get(key)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return list(model.model_fields)


def _with_fix(exc: InputError) -> str:
    """`exc` as text, with a fix for unknown configuration keys and bad --bbox values when it has none."""
    if exc.fix:
        return str(exc)
    if "Extra inputs are not permitted" in exc.message:
        *section, key = exc.field.split(".")
        allowed = _allowed_keys(section) if exc.field.count(" ") == 0 else None
        fix = "remove it or correct its spelling"
        if allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            fix = (
                f"remove it or correct its spelling{hint}; {'.'.join(section) or 'the run'} takes {', '.join(allowed)}"
            )
        return f"{exc} — {fix}"
    if exc.field in ("--bbox", "bbox"):
        return f"{exc} — {BBOX_FIX}"
    return str(exc)


def one_line(exc: BaseException) -> str:
    """The error as one line: YAML errors by line and column, filter errors with the expression inline."""
    from lulc_core.osm.filter import FilterSyntaxError

    text = _with_fix(exc) if isinstance(exc, InputError) else str(exc)
    cause = exc.__cause__
    if isinstance(cause, yaml.MarkedYAMLError) and " is not valid YAML:" in text:
        mark = cause.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = cause.problem or cause.context or "syntax error"
        text = (
            f"{text.split(' is not valid YAML:', 1)[0]} is not valid YAML: {problem}{where} — fix the YAML syntax there"
        )
    if isinstance(exc, FilterSyntaxError):
        text = text.replace(f"\n  {exc.expr}\n  {' ' * exc.position}^", f" in `{exc.expr}`")
    return " ".join(text.split())


def _target_of(path: object) -> object:
    """The file a temporary `.NAME.XXXX.part` of raster.atomic_path stands for (else `path` unchanged)."""
    if isinstance(path, str) and path.endswith(".part"):
        p = Path(path)
        if p.name.startswith(".") and p.name.count(".") >= 3:
            return str(p.with_name(p.name[1:].rsplit(".", 2)[0]))
    return path


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {redact(message)}", err=True, fg="red")
    sys.exit(code)


def main() -> None:
    """Entry point: every failure becomes one line on stderr and a non-zero exit code (no traceback; -v logs it)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    try:
        app()
    except InputError as exc:
        _fail(one_line(exc), EXIT_INPUT)
    except NotFoundError as exc:
        _fail(one_line(exc), EXIT_NOT_FOUND)
    except LulcError as exc:
        _fail(one_line(exc), EXIT_ERROR)
    except OSError as exc:
        log.debug("I/O error", exc_info=True)
        path = _target_of(exc.filename2 or exc.filename)
        what = f"{path}: {exc.strerror}" if path and exc.strerror else one_line(exc)
        _fail(f"{what} — check the path and its permissions", EXIT_ERROR)
    except ModuleNotFoundError as exc:  # an optional role not installed: name the extra
        log.debug("missing module", exc_info=True)
        _fail(one_line(missing_extra(exc) or exc), EXIT_ERROR)
    except Interrupted as exc:
        name, code = ("SIGTERM", EXIT_TERM) if exc.signum == signal.SIGTERM else ("Ctrl-C", EXIT_INT)
        _fail(f"interrupted ({name}); finished files are kept — run the same command again to resume", code)
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        _fail(f"unexpected {type(exc).__name__}: {one_line(exc)} (run with -v to see where)", EXIT_ERROR)


if __name__ == "__main__":
    main()
