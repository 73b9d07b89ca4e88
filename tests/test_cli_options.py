"""CLI options that would be accepted and then ignored are refused at parse time, naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lulc.cli import app
from lulc_core.errors import InputError


@pytest.mark.parametrize(
    ("command", "extra", "field"),
    [
        (["pipeline", "submit"], ["--image", "ghcr.io/lulc/lulc:9.9.9"], "--image"),
        (["pipeline", "submit"], ["--config", "conf/run.yaml"], "--config"),
        (["pipeline", "schedule", "--cron", "0 3 * * 1"], ["-c", "conf/run.yaml"], "--config"),
        (["pipeline", "schedule", "--cron", "0 3 * * 1"], ["--image", "ghcr.io/lulc/lulc:9.9.9"], "--image"),
    ],
)
def test_compile_options_with_a_compiled_package_are_refused(
    command: list[str], extra: list[str], field: str, tmp_path: Path
) -> None:
    package = tmp_path / "pipeline.yaml"
    package.write_text("pipelineInfo: {name: lulc-training}\n")
    args = [*command, "--host", "http://127.0.0.1:9", "--package", str(package), *extra]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InputError), result.output
    assert result.exception.field == field and "--package" in str(result.exception)


def test_logging_after_an_in_process_invocation_reaches_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """`lulc` configures the root logger; run in process (the runner swaps sys.stderr, then closes its stream), a
    later record must reach the stderr of the moment, not the closed stream ("--- Logging error ---")."""
    import logging

    assert CliRunner().invoke(app, ["registry", "--help"]).exit_code == 0
    logging.getLogger("lulc.test").warning("after the invocation")
    err = capsys.readouterr().err
    assert "after the invocation" in err and "Logging error" not in err


def test_the_predictors_json_logs_reach_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """The predictor's JSON log handler, configured while another stream was stderr (closed since), writes to the
    stderr of the moment."""
    import contextlib
    import io
    import logging

    from serving.observability import configure_logging

    loggers = [logging.getLogger(name) for name in ("serving", "lulc_core", "lulc")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        with contextlib.redirect_stderr(io.StringIO()) as then:
            configure_logging()
        then.close()
        logging.getLogger("lulc.test").warning("after the stream closed")
        err = capsys.readouterr().err
        assert '"message": "after the stream closed"' in err and "Logging error" not in err
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
