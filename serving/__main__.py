"""Entry point of the predictor container: `python -m serving --model-dir /mnt/models --model-name lulc`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving import isolated_argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The predictor's command line."""
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    p.add_argument("--model-dir", default="/mnt/models", help="Bundle directory (KServe's storage initializer).")
    p.add_argument("--model", default=None, help="Bundle directory or registry ref NAME@STAGE (overrides --model-dir).")
    p.add_argument("--model-name", default="lulc", help="Name on /v1/models/<name> and /v2/models/<name>.")
    p.add_argument("--config", type=Path, default=None, help="Run YAML (imagery store, OSM source, serving).")
    p.add_argument("--host", default="127.0.0.1", help="Bind address (0.0.0.0 in a container).")
    p.add_argument("--port", "--http_port", dest="port", type=int, default=8080, help="HTTP port.")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="Largest request body (MB); larger -> 413.")
    p.add_argument("--max-concurrency", type=int, default=1, help="Predictions run at once (memory bound).")
    p.add_argument("--timeout-s", type=float, default=600.0, help="Deadline of one prediction (-> 504).")
    p.add_argument("--grace-period-s", type=int, default=30, help="Graceful shutdown: time for requests in flight.")
    p.add_argument("--log-level", default="INFO", help="Logging level of lulc's JSON logs.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model once and serve until SIGTERM."""
    args = parse_args(argv)
    from lulc_core.config import load_run_config
    from lulc_core.errors import InputError, LulcError
    from lulc_core.extras import missing_extra

    try:
        with isolated_argv():
            from serving.observability import configure_logging
            from serving.predictor import LulcModel
            from serving.server import run_server
    except ModuleNotFoundError as exc:
        sys.exit(f"python -m serving: {missing_extra(exc) or exc}")

    configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO))
    try:
        config = load_run_config(args.config) if args.config else None
        model = LulcModel(
            args.model_name,
            args.model or args.model_dir,
            config,
            device=args.device,
            max_concurrency=args.max_concurrency,
            timeout_s=args.timeout_s,
        )
        model.load()
    except LulcError as exc:
        logging.getLogger("serving").error("cannot start: %s", exc)
        sys.exit(2 if isinstance(exc, InputError) else 1)
    run_server(
        model,
        host=args.host,
        port=args.port,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        grace_period_s=args.grace_period_s,
    )


if __name__ == "__main__":
    main()
