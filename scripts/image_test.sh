#!/usr/bin/env bash
# make image-test: build the images for real and run the predictor as KServe runs it (not part of `make test`).
#
#  1. a Docker engine: Debian's docker.io when missing, dockerd started when not running (needs root)
#  2. the base: PYTHON_IMAGE if given, else python:3.11.14-slim-bookworm if present or pullable, else a Debian
#     bookworm Python base built with scripts/debootstrap_base.sh (no registry needed)
#  3. the full image (target runtime) and the predictor image (target predictor), legacy builder
#     (DOCKER_BUILDKIT=0: no `# syntax` frontend to pull); TORCH_INDEX defaults to a local index of torch's CPU
#     wheel (scripts/image_test.py prepare), as download.pytorch.org may be unreachable
#  4. the predictor container as the InferenceService runs it: read-only root filesystem, UID 10001, every
#     capability dropped, no new privileges, the bundle mounted read-only at /mnt/models, /tmp a tmpfs; then
#     GET /health, POST /segment/ and V2 infer (scripts/image_test.py check)
#  5. one KFP component's entry point inside the full image: the compiled `configure` step's command and args
#  6. the sizes of both images
#
# Environment: PYTHON_IMAGE, TORCH_INDEX, IMAGE_TAG (default lulc:image-test), PORT (default 18080), KEEP=1 keeps
# the work directory. Host networking (`--network host`) so it works where dockerd cannot manage iptables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON_BIN:-$repo/.venv/bin/python}"
tag="${IMAGE_TAG:-lulc:image-test}"
predictor="${tag%%:*}-predictor:${tag#*:}"
port="${PORT:-18080}"
work="$(mktemp -d /var/tmp/lulc-image-test.XXXXXX)"
chmod 755 "$work"
log() { printf 'image-test: %s\n' "$*" >&2; }
cleanup() {
  docker rm -f lulc-image-test-predictor >/dev/null 2>&1 || true
  [[ -n "${index_pid:-}" ]] && kill "$index_pid" 2>/dev/null || true
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT

# 1. engine
if ! command -v dockerd >/dev/null; then
  log "installing docker.io from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/lulc-dockerd.log)"
  (dockerd --iptables=false --ip6tables=false >/var/log/lulc-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/lulc-dockerd.log >&2; exit 1; }
fi

# 2. base
base="${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}"
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
  [[ -n "${PYTHON_IMAGE:-}" ]] && { log "PYTHON_IMAGE $base is neither present nor pullable"; exit 1; }
  base="lulc-base/python:3.11-bookworm"
  docker image inspect "$base" >/dev/null 2>&1 || bash "$here/debootstrap_base.sh" "$base"
fi
log "base image $base"

# 3. build (the predictor target shares the builder's layers)
PYTHONPATH="$repo" "$python" "$here/image_test.py" prepare "$work"
index="${TORCH_INDEX:-}"
if [[ -z "$index" ]]; then
  "$python" -m http.server --bind 127.0.0.1 "$((port + 1))" --directory "$work/simple" >/dev/null 2>&1 &
  index_pid=$!
  index="http://127.0.0.1:$((port + 1))/"
fi
for target in runtime predictor; do
  name="$tag"; [[ "$target" == predictor ]] && name="$predictor"
  log "building $name (target $target)"
  DOCKER_BUILDKIT=0 docker build -q --network host --target "$target" \
    --build-arg PYTHON_IMAGE="$base" --build-arg TORCH_INDEX="$index" --build-arg GIT_SHA="$(git -C "$repo" rev-parse HEAD)" \
    -t "$name" "$repo" >/dev/null
done

# 4. the predictor as the InferenceService runs it
log "running $predictor read-only as UID 10001, no capabilities, bundle at /mnt/models, /tmp tmpfs"
docker run -d --name lulc-image-test-predictor --network host \
  --read-only --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /tmp:rw,size=1g,mode=1777 \
  -v "$work/bundle:/mnt/models:ro" -v "$work/run.yaml:/etc/lulc/run.yaml:ro" -v "$repo/data/sample:/data/sample:ro" \
  "$predictor" python -m serving --model-dir /mnt/models --model-name lulc --host 127.0.0.1 --port "$port" \
  --config /etc/lulc/run.yaml >/dev/null
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  docker ps -q --filter name=lulc-image-test-predictor | grep -q . || break
  sleep 1
done
curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null || { docker logs lulc-image-test-predictor >&2; exit 1; }
"$python" "$here/image_test.py" check "http://127.0.0.1:$port"

# 5. a KFP component's entry point in the full image
mkdir -m 777 "$work/out"
mapfile -d '' argv < <(PYTHONPATH="$repo" "$python" "$here/image_test.py" component "$work")
docker run --rm --network none --read-only --user 10001:10001 --cap-drop ALL --tmpfs /tmp:rw,mode=1777 \
  -v "$work/out:/out" --entrypoint "${argv[0]}" "$tag" "${argv[@]:1}" >"$work/component.log" 2>&1 \
  || { cat "$work/component.log" >&2; exit 1; }
PYTHONPATH="$repo" "$python" "$here/image_test.py" component-check "$work/out"

# 6. sizes
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${tag}|${predictor}) " | sed 's/^/image-test: size /'
log "passed"
