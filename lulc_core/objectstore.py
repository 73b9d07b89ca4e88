"""Outputs in an S3 object store, read through GDAL's `/vsis3/` and written whole with boto3.

An output location `s3://bucket/prefix` becomes the path `/vsis3/bucket/prefix`: rasterio/GDAL read COGs there
with range requests (a block is validated without downloading it; a zone VRT reads its blocks from there), and
`lulc_core.raster.atomic_path` writes a file under it to a local temporary file first and uploads it when it is
complete — S3 shows an object only once its upload has finished, so no partial object is ever presented as
complete. The endpoint and keys are the usual `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
(boto3's own); GDAL gets the matching `AWS_S3_ENDPOINT`, `AWS_HTTPS` and `AWS_VIRTUAL_HOSTING` from them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from lulc_core.errors import InputError

VSI = "/vsis3/"


def is_s3(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is an `s3://` URI or a `/vsis3/` path."""
    text = str(location)
    return text.startswith(("s3://", VSI))


def vsi_path(uri: str) -> Path:
    """`s3://bucket/prefix` -> `/vsis3/bucket/prefix` (GDAL's path; GDAL configured for the endpoint)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError("mapping.output_dir", f"{uri!r} is not an s3://bucket/prefix URI", "write s3://bucket/prefix")
    configure_gdal()
    return Path(VSI + parsed.netloc + parsed.path.rstrip("/"))


def configure_gdal() -> None:
    """Point GDAL's /vsis3/ at `AWS_ENDPOINT_URL` when set (MinIO, moto; plain http without TLS), path-style."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        os.environ.setdefault("AWS_S3_ENDPOINT", parsed.netloc)
        os.environ.setdefault("AWS_HTTPS", "NO" if parsed.scheme == "http" else "YES")
        os.environ.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")


def bucket_key(path: str | os.PathLike[str]) -> tuple[str, str]:
    """`/vsis3/bucket/a/b` -> ("bucket", "a/b")."""
    parts = PurePosixPath(str(path)[len(VSI) :]).parts
    return parts[0], "/".join(parts[1:])


def _client() -> Any:
    import boto3

    return boto3.client("s3")  # endpoint, keys and region from the environment (AWS_ENDPOINT_URL, ...)


def upload(local: Path, target: str | os.PathLike[str]) -> None:
    """Put the complete file `local` at `target` (/vsis3/...): one object, visible only once fully uploaded."""
    bucket, key = bucket_key(target)
    _client().upload_file(str(local), bucket, key)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a local file or an S3 object (/vsis3/...) exists."""
    if not is_s3(path):
        return Path(path).is_file()
    bucket, key = bucket_key(path)
    client = _client()
    try:
        client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError:
        return False
    return True
