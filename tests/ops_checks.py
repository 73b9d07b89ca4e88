"""Static checks of the Dockerfile, the Makefile's install steps and Kubernetes objects (used by the ops tests).

Each check returns a list of problems (empty = fine), so the tests can run it on the real files and on small bad
examples alike.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its argument text, the line it starts on."""

    keyword: str
    args: str
    line: int
    comments: list[str] = field(default_factory=list)


@dataclass
class Stage:
    """A build stage: the FROM image (ARG defaults substituted), its alias and its instructions."""

    image: str
    alias: str | None
    instructions: list[Instruction]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with backslash continuations joined; comment lines are attached to the next instruction."""
    out: list[Instruction] = []
    comments: list[str] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            if line.startswith("#"):
                comments.append(line.lstrip("#").strip())
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(x for x in buf if x)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start, comments))
        buf, comments = [], []
    if buf:
        raise ValueError(f"Dockerfile line {start}: the instruction ends with a dangling backslash")
    return out


def _arg_defaults(instructions: Iterable[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)


def stages(instructions: list[Instruction]) -> list[Stage]:
    """Split into build stages; FROM images get the global ARG defaults substituted.

    A stage built FROM an earlier stage (`FROM runtime-base AS predictor`) inherits it: its image is the earlier
    stage's base image and its instructions begin with the earlier stage's (what the built image really holds).
    """
    first_from = next((i for i, ins in enumerate(instructions) if ins.keyword == "FROM"), None)
    if first_from is None:
        raise ValueError("the Dockerfile has no FROM instruction")
    global_args = _arg_defaults(instructions[:first_from])
    result: list[Stage] = []
    for ins in instructions[first_from:]:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            image = _substitute(words[0], global_args)
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            parent = next((s for s in result if s.alias == image), None)
            if parent is not None:
                result.append(Stage(parent.image, alias, list(parent.instructions)))
            else:
                result.append(Stage(image, alias, []))
        else:
            result[-1].instructions.append(ins)
    return result


# An exact version (3.11.14-slim-bookworm, 0.1.0) or a git SHA (7-40 hex digits, optionally -cuda).
_EXACT_TAG = re.compile(r"^[\w.\-/]+:(\d+\.\d+\.\d+[\w.\-]*|[0-9a-f]{7,40}(-[a-z0-9]+)?)$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def image_pin_problems(image: str, stage_aliases: Iterable[str] = ()) -> list[str]:
    """An image must be pinned by digest or by an exact version tag (X.Y.Z...), never latest or tag-less."""
    if image in set(stage_aliases):
        return []
    if "$" in image:
        return [f"{image}: unresolved variable (give the ARG a default)"]
    if _DIGEST.search(image):
        return []
    if image.endswith(":latest"):
        return [f"{image}: ':latest' is not a pin"]
    if not _EXACT_TAG.match(image):
        return [f"{image}: pin an exact version tag (e.g. python:3.11.14-slim-bookworm) or a digest"]
    return []


def user_problems(final: Stage) -> list[str]:
    """The final stage must switch to a numeric, non-zero UID (and GID when given) and never back to root."""
    users = [ins for ins in final.instructions if ins.keyword == "USER"]
    if not users:
        return ["the final stage has no USER: the image would run as root"]
    last = users[-1].args.strip()
    uid, _, gid = last.partition(":")
    problems = []
    if not uid.isdigit():
        problems.append(f"USER {last}: use a numeric UID so Kubernetes can verify runAsNonRoot")
    elif int(uid) == 0:
        problems.append(f"USER {last}: UID 0 is root")
    if gid and (not gid.isdigit() or int(gid) == 0):
        problems.append(f"USER {last}: use a numeric, non-zero GID")
    return problems


SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL|ACCESS_?KEY)", re.I)


def _env_pairs(args: str) -> Iterator[tuple[str, str]]:
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:  # legacy form: ENV NAME value
        yield words[0], " ".join(words[1:])
        return
    for w in words:
        name, _, value = w.partition("=")
        yield name, value


def secret_problems(instructions: Iterable[Instruction]) -> list[str]:
    """No ENV/ARG/LABEL whose name looks like a secret, and no COPY/ADD of secret-looking files."""
    problems = []
    for ins in instructions:
        if ins.keyword in {"ENV", "LABEL"}:
            for name, _value in _env_pairs(ins.args):
                if SECRET_NAME.search(name):
                    problems.append(f"line {ins.line}: {ins.keyword} {name} bakes a secret into the image")
        elif ins.keyword == "ARG":
            name = ins.args.partition("=")[0].strip()
            if SECRET_NAME.search(name):
                problems.append(f"line {ins.line}: ARG {name} ends up in the image history; use a build secret")
        elif ins.keyword in {"COPY", "ADD"}:
            for src in shlex.split(ins.args)[:-1]:
                if src.startswith("--"):
                    continue
                if re.search(r"(^|/)(\.env|.*\.pem|.*\.key|id_rsa.*|\.netrc|\.npmrc|\.pypirc|kubeconfig)$", src):
                    problems.append(f"line {ins.line}: {ins.keyword} {src} copies a secret-looking file")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# pip install steps


_QUIET_FLAGS = {"-q", "--quiet", "-qq", "--no-cache-dir", "--no-input", "--disable-pip-version-check"}


def normalize_pip_install(command: str) -> tuple[str, ...] | None:
    """A `pip install ...` command as comparable words: no env prefix, no pip path, no quiet/cache flags.

    `-e X` (editable) becomes `X` and extras are dropped from the project path (`.[dev]` -> `.`): the image installs
    the same project, not editable and without the development tools. Returns None for anything but pip install.
    """
    words = shlex.split(command)
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    if len(words) >= 3 and words[0].endswith(("python", "python3")) and words[1:3] == ["-m", "pip"]:
        words = ["pip", *words[3:]]
    if len(words) < 2 or not re.search(r"(^|/)pip3?$", words[0]) or words[1] != "install":
        return None
    out: list[str] = ["pip", "install"]
    for w in words[2:]:
        if w in _QUIET_FLAGS or w in {"-e", "--editable"}:
            continue
        out.append(re.sub(r"^(\.|\./)\[[\w,\-]+\]$", ".", w))
    return tuple(out)


def split_shell(command: str) -> list[str]:
    """Split a shell line on `&&` and `;` (enough for install steps)."""
    return [part.strip() for part in re.split(r"&&|;", command) if part.strip()]


def dockerfile_pip_installs(stage_list: list[Stage]) -> list[tuple[str, ...]]:
    """Every pip install in RUN instructions, in order, over all stages."""
    found = []
    for stage in stage_list:
        for ins in stage.instructions:
            if ins.keyword != "RUN":
                continue
            for part in split_shell(ins.args):
                norm = normalize_pip_install(part)
                if norm:
                    found.append(norm)
    return found


def makefile_recipe(makefile: str, target_pattern: str) -> list[str]:
    """Recipe lines of the first rule whose target matches `target_pattern` (a regex over the target text)."""
    lines = makefile.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("\t") and re.match(rf"^{target_pattern}\s*:(?!=)", line):
            recipe = []
            for body in lines[i + 1 :]:
                if not body.startswith("\t"):
                    break
                recipe.append(body[1:].strip())
            return recipe
    raise ValueError(f"no Makefile rule matches {target_pattern!r}")


def makefile_pip_installs(makefile: str) -> list[tuple[str, ...]]:
    """The pip install steps of the rule that builds the venv (the one `make test` depends on)."""
    found = []
    for line in makefile_recipe(makefile, r"\$\(STAMP\)"):
        if line.startswith("#"):
            continue
        line = re.sub(r"\$\((BIN)\)/", "", line)
        line = re.sub(r"\$\((\w+)\)", r"${\1}", line)  # make's $(VAR) is the Dockerfile's ${VAR}
        for part in split_shell(line):
            norm = normalize_pip_install(part)
            if norm:
                found.append(norm)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes objects

_POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_ISVC_COMPONENTS = ("predictor", "transformer", "explainer")


def _dig(obj: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod-spec-like dict) for workloads and KServe InferenceService components."""
    kind = doc.get("kind", "")
    name = f"{kind}/{_dig(doc, ('metadata', 'name'))}"
    if kind in _POD_PATHS:
        spec = _dig(doc, _POD_PATHS[kind])
        return [(name, spec)] if isinstance(spec, dict) else []
    if kind == "InferenceService":
        return [
            (f"{name}.{comp}", spec) for comp in _ISVC_COMPONENTS if isinstance(spec := _dig(doc, ("spec", comp)), dict)
        ]
    if kind in {"ServingRuntime", "ClusterServingRuntime"}:
        spec = doc.get("spec")
        return [(name, spec)] if isinstance(spec, dict) else []
    return []


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = [c for key in ("containers", "initContainers") for c in spec.get(key) or [] if isinstance(c, dict)]
    # InferenceService predictor shorthand: `predictor: {model: {...}}` or a single container under `predictor`.
    for key in ("model", "pytorch", "sklearn", "triton", "huggingface"):
        if isinstance(spec.get(key), dict):
            out.append(spec[key])
    return out


def workload_security_problems(doc: dict[str, Any]) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, all capabilities dropped, pinned images,
    secrets only by reference."""
    problems = []
    for where, spec in pod_specs(doc):
        pod_sc = spec.get("securityContext") or {}
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{where}: host namespaces are shared")
        containers = _containers(spec)
        if not containers:
            problems.append(f"{where}: no container found to check")
        for c in containers:
            cname = f"{where}[{c.get('name', '?')}]"
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True:
                problems.append(f"{cname}: runAsNonRoot must be true")
            if uid is not None and int(uid) == 0:
                problems.append(f"{cname}: runAsUser 0 is root")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cname}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cname}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                problems.append(f"{cname}: privileged container")
            drop = [str(x).upper() for x in _dig(sc, ("capabilities", "drop")) or []]
            if "ALL" not in drop:
                problems.append(f"{cname}: capabilities.drop must contain ALL")
            if _dig(sc, ("capabilities", "add")):
                problems.append(f"{cname}: capabilities.add {sc['capabilities']['add']} grants capabilities")
            image = c.get("image")
            if isinstance(image, str) and image_pin_problems(image):
                problems.append(f"{cname}: image {image} is not pinned (tag it with the git SHA or a version)")
            for env in c.get("env") or []:
                if SECRET_NAME.search(str(env.get("name", ""))) and "value" in env and env["value"]:
                    problems.append(f"{cname}: env {env['name']} has a literal value; use valueFrom.secretKeyRef")
    return problems


def secret_object_problems(doc: dict[str, Any]) -> list[str]:
    """A Secret in the manifests may only carry placeholders: real values are created out of band."""
    if doc.get("kind") != "Secret":
        return []
    where = f"Secret/{_dig(doc, ('metadata', 'name'))}"
    problems = []
    for key in ("data", "stringData"):
        for k, v in (doc.get(key) or {}).items():
            if v not in (None, "") and not re.fullmatch(
                r"(?i)(<[^>]*>|\$\{\w+\}|changeme|replace-?me|placeholder)", str(v)
            ):
                problems.append(f"{where}: {key}.{k} holds a value; keep secrets out of the repository")
    return problems
