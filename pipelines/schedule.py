"""Retrain on a schedule: a KFP recurring run of the compiled pipeline (`lulc pipeline schedule --cron ...`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lulc_core.errors import InputError
from pipelines.submit import call_kfp, check_host, check_package, ensure_experiment, make_client

log = logging.getLogger(__name__)


class ScheduleResult(BaseModel):
    """A created recurring run."""

    recurring_run_id: str
    experiment_id: str
    cron: str = Field(description="The 6-field cron expression (seconds first) the scheduler uses.")
    url: str


def to_kfp_cron(cron: str) -> str:
    """A 5-field crontab (minute first) or 6-field KFP cron (seconds first) as the 6-field form KFP expects."""
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise InputError(
        "--cron", f"{cron!r} has {len(fields)} fields", "give 5 (m h dom mon dow) or 6 (s m h dom mon dow)"
    )


def schedule(
    package: str | Path,
    host: str,
    cron: str,
    *,
    name: str = "lulc-retrain",
    experiment: str = "lulc",
    params: dict[str, Any] | None = None,
    token: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    max_concurrency: int = 1,
) -> ScheduleResult:
    """Create a recurring run of `package` on `cron` (no catch-up of missed runs)."""
    path = check_package(package)
    expr = to_kfp_cron(cron)
    client = make_client(host, token, namespace)
    host = check_host(host)
    exp_id = ensure_experiment(client, host, experiment, namespace)
    job = call_kfp(
        host,
        client.create_recurring_run,
        experiment_id=exp_id,
        job_name=name,
        cron_expression=expr,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=params or {},
        pipeline_package_path=str(path),
        service_account=service_account,
    )
    rid = str(job.recurring_run_id)
    return ScheduleResult(
        recurring_run_id=rid, experiment_id=exp_id, cron=expr, url=f"{host}/#/recurringrun/details/{rid}"
    )
