"""The original lulc-utility's environment variable names, accepted as deprecated aliases of lulc's own.

An operator's `.env` of the original keeps working: each old name found in the environment is copied to the new
one (unless the new one is set too, which then wins) and yields one deprecation notice naming the replacement.
`NEPTUNE_MODE` is the Neptune client's own variable and means the same in both, so it is read as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

LEGACY_ENV: dict[str, str] = {
    "SENTINELHUB_API_ID": "SH_CLIENT_ID",
    "SENTINELHUB_API_SECRET": "SH_CLIENT_SECRET",
    "NEPTUNE_PROJECT_API_TOKEN": "NEPTUNE_API_TOKEN",
    "NEPTUNE_PROJECT_ID": "NEPTUNE_PROJECT",
    "LOG_LEVEL": "LULC_LOG_LEVEL",
    "MODEL_VERSION": "LULC_MODEL",
    "LULC_UTILITY_API_PORT": "PORT",
}
"""Old name (lulc-utility) -> new name (lulc)."""

UNCHANGED_ENV = ("NEPTUNE_MODE",)
"""Names of the original that lulc reads under the same name and meaning."""


def apply_legacy_env(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Copy every old variable that is set (and not empty) to its new name; return one notice per old name.

    The new name wins when both are set. Values are never part of a notice (some are credentials).
    """
    env = os.environ if environ is None else environ
    notices = []
    for old, new in LEGACY_ENV.items():
        if not env.get(old):
            continue
        if env.get(new):
            notices.append(f"{old} is deprecated (lulc-utility name) and ignored: {new} is set and wins")
            continue
        env[new] = env[old]
        notices.append(f"{old} is deprecated (lulc-utility name); set {new} instead")
    return notices
