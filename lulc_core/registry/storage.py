"""Pull a registered bundle into a directory, as KServe's storage initializer does for `/mnt/models`.

`lulc registry pull SOURCE DEST` calls `pull`. SOURCE is a registry reference of the configured backend
(`lulc-segformer@production`) or a `neptune://<workspace>/<project>/<version id>` storage URI, which carries
its own project (the token comes from NEPTUNE_API_TOKEN): that is what the ClusterStorageContainer of
`manifests/cluster/neptune-storage` passes, with `/mnt/models` as DEST. Object-store URIs (s3://, gs://) are
KServe's own storage initializer's job, not ours.
"""

from __future__ import annotations

from pathlib import Path

from lulc_core.config import RegistryConfig
from lulc_core.errors import InputError

OBJECT_STORE_SCHEMES = ("s3://", "gs://", "https://", "http://", "hdfs://", "webhdfs://", "pvc://", "file://")


def pull(source: str, dest: Path, cfg: RegistryConfig, work_dir: Path) -> Path:
    """Download the bundle `source` names into `dest`; return `dest` (lulc.json at its top)."""
    from lulc_core.registry import build_registry

    work_dir = Path(work_dir)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else work_dir / "registry-cache"
    if source.startswith("neptune://"):
        from lulc_core.registry.neptune_backend import pull_storage_uri

        return pull_storage_uri(source, Path(dest), cache_dir)
    if source.startswith(OBJECT_STORE_SCHEMES):
        raise InputError(
            "source",
            f"{source!r} is an object-store URI",
            "KServe's storage initializer fetches it; give a registry reference (NAME@stage) or a neptune:// URI",
        )
    return build_registry(cfg, work_dir).pull(source, Path(dest))
