"""The project image every component runs in — defined once, pinned, never `:latest`.

Precedence: an explicit image (CLI `--image`) > env `LULC_IMAGE` > `PipelineConfig.image` (the run configuration's
`pipeline.image`, default `ghcr.io/lulc/lulc:0.1.0`). The image is built from the project's Dockerfile and already
contains lulc, kfp and every dependency, so no component installs packages at run time.
"""

from __future__ import annotations

import os
import re

from lulc_core.config import PipelineConfig
from lulc_core.errors import ConfigError

ENV_VAR = "LULC_IMAGE"
DEFAULT_IMAGE: str = PipelineConfig.model_fields["image"].default
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def check_image(ref: str, field: str = "pipeline.image") -> str:
    """Return `ref` when it is pinned by a tag (not `latest`) or a sha256 digest; else raise ConfigError."""
    ref = ref.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ConfigError(field, f"{ref!r} is not an image reference", "give REGISTRY/NAME:TAG, e.g. " + DEFAULT_IMAGE)
    if _DIGEST.search(ref):
        return ref
    last = ref.rsplit("/", 1)[-1]
    tag = last.rpartition(":")[2] if ":" in last else ""
    if not tag:
        raise ConfigError(field, f"image {ref!r} has no tag", "pin a tag or a digest, e.g. " + DEFAULT_IMAGE)
    if tag == "latest":
        raise ConfigError(field, f"image {ref!r} uses ':latest'", "pin a version tag or a sha256 digest")
    return ref


def resolve_image(explicit: str | None = None, configured: str | None = None) -> str:
    """The image to run: `explicit` > env LULC_IMAGE > `configured` > the default, checked to be pinned."""
    if explicit:
        return check_image(explicit, "--image")
    if os.environ.get(ENV_VAR):
        return check_image(os.environ[ENV_VAR], ENV_VAR)
    return check_image(configured or DEFAULT_IMAGE)


IMAGE: str = resolve_image()
"""The base image of every component (`@dsl.component(base_image=IMAGE)`)."""
