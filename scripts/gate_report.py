"""The quality gate's verdict for a retraining run, as a job summary (used by scripts/retrain.sh).

Reads `lulc registry list --json` on stdin, picks the newest version registered since the run was submitted,
writes its gate decision and numbers (the `lulc.gate.*` tags the pipeline's register step recorded) as Markdown to
stdout and, when given, appends it to the GitHub job summary.

Exit codes: 0 the gate passed (promoted), 1 the gate rejected the model, 3 no version was registered since the run
was submitted, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

GATE_PREFIX = "lulc.gate."
PASSED, REJECTED, NO_VERSION, BAD_INPUT = 0, 1, 3, 2
NUMBERS = (
    ("candidate_miou", "candidate test mIoU"),
    ("candidate_accuracy", "candidate overall accuracy"),
    ("min_miou", "threshold: min mIoU"),
    ("min_accuracy", "threshold: min overall accuracy"),
    ("production_version", "production version compared with"),
    ("production_miou", "production test mIoU"),
    ("production_accuracy", "production overall accuracy"),
    ("tolerance", "allowed mIoU drop"),
    ("same_test_set", "same test set"),
)


def _parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{what} {value!r} has no time zone (e.g. 2026-01-15T03:17:00+00:00)")
    return parsed


def pick_version(versions: list[dict[str, Any]], since: datetime, model: str | None) -> dict[str, Any] | None:
    """The newest version of `model` (any model when None) created at or after `since`."""
    fresh = [
        v
        for v in versions
        if (model is None or v.get("name") == model)
        and v.get("created_at")
        and _parse_time(str(v["created_at"]), "created_at") >= since
    ]
    return max(fresh, key=lambda v: (_parse_time(str(v["created_at"]), "created_at"), int(v["version"])), default=None)


def render(version: dict[str, Any] | None, run: str) -> tuple[str, int]:
    """Markdown for the job summary and the exit code."""
    if version is None:
        text = (
            f"## Retraining: no model registered\n\nThe run {run} succeeded but registered no model version since it "
            "was submitted, so there is no gate decision. Check the run's register step.\n"
        )
        return text, NO_VERSION
    tags: dict[str, str] = version.get("tags") or {}
    ref = f"{version['name']}@{version['version']}"
    passed = tags.get(GATE_PREFIX + "passed")
    if passed not in ("true", "false"):
        return f"## Retraining: {ref} has no gate decision\n\nRun {run}; tags `lulc.gate.*` are missing.\n", NO_VERSION
    verdict = "passed — promoted to **production**" if passed == "true" else "**rejected** — not promoted"
    rows = [f"| {label} | {tags[GATE_PREFIX + key]} |" for key, label in NUMBERS if GATE_PREFIX + key in tags]
    reasons = [f"- {r.strip()}" for r in tags.get(GATE_PREFIX + "reasons", "").split(" | ") if r.strip()]
    lines = [
        f"## Retraining: quality gate {verdict}",
        "",
        f"Model version `{ref}` ({version.get('backend', '?')}), run {run}.",
        "",
        "| number | value |",
        "| --- | --- |",
        *rows,
        "",
        *reasons,
        "",
    ]
    return "\n".join(lines), PASSED if passed == "true" else REJECTED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", required=True, help="When the run was submitted (ISO 8601 with time zone).")
    parser.add_argument("--model", default=None, help="Registered model name (default: any).")
    parser.add_argument("--run", default="-", help="The KFP run (id or URL) for the summary.")
    parser.add_argument("--summary", type=Path, default=None, help="Append the Markdown here (GITHUB_STEP_SUMMARY).")
    parser.add_argument("--skew-s", type=float, default=120.0, help="Clock skew allowed between CI and registry.")
    args = parser.parse_args(argv)
    try:
        since = _parse_time(args.since, "--since") - timedelta(seconds=args.skew_s)
        try:
            versions = json.loads(sys.stdin.read() or "[]")
        except json.JSONDecodeError as exc:
            raise ValueError(f"stdin is not the JSON of `lulc registry list --json`: {exc}") from None
        if not isinstance(versions, list):
            raise ValueError("expected a JSON list of versions on stdin (`lulc registry list --json`)")
        version = pick_version(versions, since, args.model)
    except (ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"gate_report: {exc}\n")
        return BAD_INPUT
    text, code = render(version, args.run)
    sys.stdout.write(text)
    if args.summary is not None:
        with args.summary.open("a", encoding="utf-8") as fh:
            fh.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
