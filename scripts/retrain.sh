#!/usr/bin/env bash
# Retrain from CI: submit the training pipeline to Kubeflow, wait for the run, and fail unless it succeeded and the
# quality gate promoted the model. .github/workflows/retrain.yml runs exactly this script, and
# tests/test_workflows.py runs it against the KFP API stand-in.
#
# Environment:
#   KFP_HOST             KFP API endpoint (required; repository secret KFP_HOST in CI)
#   KFP_TOKEN            bearer token for the KFP API (optional; read by `lulc pipeline submit`, never printed)
#   LULC_CONFIG          run configuration to train with (default conf/run.yaml)
#   LULC_EXPERIMENT      KFP experiment (default lulc-retrain)
#   LULC_IMAGE           project image of every step (pinned; in CI <registry>/<repo>:<git sha>)
#   GITHUB_STEP_SUMMARY  the job summary file (set by GitHub Actions); the gate's numbers are appended to it
set -euo pipefail

: "${KFP_HOST:?KFP_HOST is not set: the KFP API endpoint (repository secret KFP_HOST)}"
config="${LULC_CONFIG:-conf/run.yaml}"
experiment="${LULC_EXPERIMENT:-lulc-retrain}"
[[ -f "$config" ]] || { echo "retrain: run configuration $config does not exist (LULC_CONFIG)" >&2; exit 2; }

lulc pipeline submit --host "$KFP_HOST" --config "$config" --experiment "$experiment" --wait
