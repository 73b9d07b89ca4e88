#!/usr/bin/env bash
# Retrain from CI: submit the training pipeline to Kubeflow, wait for the run, then read the quality gate's decision
# from the model registry. Fails when the run fails, when the gate rejects the model, or when no model was
# registered. .github/workflows/retrain.yml runs exactly this script; tests/test_workflows.py runs it against the
# KFP API stand-in.
#
# Environment:
#   KFP_HOST             KFP API endpoint (required; repository secret KFP_HOST in CI)
#   KFP_TOKEN            bearer token for the KFP API (optional; read by `lulc pipeline submit`, never printed)
#   LULC_CONFIG          run configuration to train with (default conf/cluster.yaml)
#   LULC_EXPERIMENT      KFP experiment (default lulc-retrain)
#   LULC_IMAGE           project image of every step (pinned; in CI <registry>/<repo>:<git sha>)
#   LULC_DEPLOY_TARGET   what the pipeline does with a promoted model: kserve (default, rolls it out) or none
#   LULC_SERVICE_ACCOUNT Kubernetes service account of the run (default lulc-pipeline: the deploy step's RBAC)
#   LULC_KFP_NAMESPACE   Kubeflow profile namespace (multi-user clusters; default: none)
#   LULC_TIMEOUT_S       longest wait for the run (default 19800 s, inside the job's 6 h limit)
#   LULC_POLL_INTERVAL   seconds between run status reads (default 30)
#   MLFLOW_TRACKING_URI  where this script reads the gate's decision: the MLflow server the pipeline registers into,
#                        as reachable from here (required when the config names an in-cluster address such as
#                        http://mlflow.mlflow.svc.cluster.local:5000; otherwise the config's URI is used); MLflow
#                        credentials as usual (MLFLOW_TRACKING_USERNAME/PASSWORD), or NEPTUNE_PROJECT/API_TOKEN
#   GITHUB_STEP_SUMMARY  job summary file (set by GitHub Actions); the gate's numbers are appended to it
# Exit status: 0 promoted; 1 gate rejected; 3 nothing registered; other non-zero: the submission or the run failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${KFP_HOST:?KFP_HOST is not set: the KFP API endpoint (repository secret KFP_HOST)}"
config="${LULC_CONFIG:-conf/cluster.yaml}"
experiment="${LULC_EXPERIMENT:-lulc-retrain}"
summary="${GITHUB_STEP_SUMMARY:-/dev/null}"
[[ -f "$config" ]] || { echo "retrain: run configuration $config does not exist (LULC_CONFIG)" >&2; exit 2; }

# Before a run of hours: the registry the gate's decision is read from must be configured.
model="$(python - "$config" <<'PY'
import os
import sys

from lulc_core.config import load_run_config
from lulc_core.errors import LulcError

try:
    registry = load_run_config(sys.argv[1]).registry
except LulcError as exc:
    sys.exit(f"retrain: {exc}")
outside = os.environ.get("MLFLOW_TRACKING_URI")
if registry.backend == "mlflow" and not (registry.tracking_uri or outside):
    sys.exit("retrain: set MLFLOW_TRACKING_URI (repository secret) or registry.tracking_uri in the run configuration")
if registry.backend == "mlflow" and not outside and ".svc" in (registry.tracking_uri or ""):
    sys.exit(f"retrain: {registry.tracking_uri} is the in-cluster MLflow server, unreachable from here: set "
             "MLFLOW_TRACKING_URI (repository secret) to its external address to read the gate's decision")
if registry.backend == "neptune" and not (registry.neptune_project or os.environ.get("NEPTUNE_PROJECT")):
    sys.exit("retrain: set NEPTUNE_PROJECT (repository secret) or registry.neptune_project in the run configuration")
print(registry.model_name)
PY
)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
since="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"

echo "retrain: submitting $config to $KFP_HOST (experiment $experiment, image ${LULC_IMAGE:-from the config})" >&2
args=(--host "$KFP_HOST" --config "$config" --experiment "$experiment" --wait
  --param "deploy_target=${LULC_DEPLOY_TARGET:-kserve}"
  --service-account "${LULC_SERVICE_ACCOUNT:-lulc-pipeline}"
  --timeout "${LULC_TIMEOUT_S:-19800}" --poll-interval "${LULC_POLL_INTERVAL:-30}")
[[ -n "${LULC_IMAGE:-}" ]] && args+=(--image "$LULC_IMAGE")
[[ -n "${LULC_KFP_NAMESPACE:-}" ]] && args+=(--namespace "$LULC_KFP_NAMESPACE")

set +e
lulc pipeline submit "${args[@]}" 2>&1 | tee "$work/submit.log"
status=${PIPESTATUS[0]}
set -e
run="$(grep -oE 'https?://[^[:space:]]*/#/runs/details/[A-Za-z0-9-]+' "$work/submit.log" | tail -n 1 || true)"

if ((status != 0)); then
  {
    echo "## Retraining: the pipeline run failed"
    echo
    echo "\`lulc pipeline submit --wait\` exited with status $status${run:+ (run: $run)}:"
    echo
    echo '```'
    tail -n 20 "$work/submit.log"
    echo '```'
  } >>"$summary"
  echo "retrain: the pipeline run failed (status $status)" >&2
  exit "$status"
fi

gate_args=(--config "$config")
[[ -n "${MLFLOW_TRACKING_URI:-}" ]] && gate_args+=(--tracking-uri "$MLFLOW_TRACKING_URI")
lulc --quiet registry list "$model" --json "${gate_args[@]}" >"$work/versions.json"
python "$here/gate_report.py" --since "$since" --model "$model" --run "${run:--}" --summary "$summary" \
  <"$work/versions.json"
