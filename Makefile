# lulc — the two commands a user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# torch's build comes from PyTorch's wheel index, for the torch step only: `--index-url` replaces the index for
# that one command, so no other package is ever looked up there. The default is the CPU build (from the default
# index, `pip install torch` on Linux takes the multi-GB CUDA build). GPU: TORCH_INDEX=https://download.pytorch.org/whl/cu128;
# the default index: TORCH_INDEX=https://pypi.org/simple. The Dockerfile's ARG and CI's env use the same variable.
# On machines with a local wheel mirror (pip's find-links / extra-index-url configuration), pip takes the pinned
# torch from the mirror when download.pytorch.org is unreachable, so this works offline too (one retry and a 15 s
# timeout: an unreachable index costs seconds per dependency page, not minutes).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# pytest processes for `make test` (pytest-xdist, one test file per process at a time: a file's module fixtures are
# built once). Most of the suite waits on its own subprocesses and stand-in servers, so 2 processes on 2 cores take
# ~0.6 of the serial time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test lint typecheck deps docs bench soak clean image-test

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, its build chosen by TORCH_INDEX (above); then lulc with every role and the dev tools.
	$(BIN)/pip install -q --retries 1 --timeout 15 --index-url $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/lulc demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Every imported package declared, none unused (deptry; configuration in pyproject.toml).
deps: $(STAMP)
	$(BIN)/deptry .

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

test: $(STAMP) lint typecheck deps docs
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

bench: $(STAMP)
	$(BIN)/python -m benchmarks

soak: $(STAMP)
	$(BIN)/pytest -q -m soak

# Build the full and the predictor image for real and run them as the cluster does (Docker from Debian's docker.io,
# a debootstrapped base when no registry is reachable; needs root; slow). Not part of `make test`.
image-test: $(STAMP)
	PYTHON_BIN=$(abspath $(BIN))/python nice -n 10 bash scripts/image_test.sh

clean:
	rm -rf $(VENV) .lulc build *.egg-info

# Dependency audit (pip-audit over requirements.lock + the torch pin; needs the network to reach PyPI's vulnerability
# data). Accepted findings, each with a reason and an expiry: .ci/pip-audit-allowlist.txt. CI runs it (ci.yml).
.PHONY: audit
audit:
	bash scripts/audit.sh
