"""A real S3 implementation on 127.0.0.1: moto's server mode (`moto[server]`), not a hand-written stand-in.

Both MLflow's artifact store (boto3) and KServe's storage initializer (`kserve_storage`, boto3) reach it through
`AWS_ENDPOINT_URL`, exactly as they reach MinIO or AWS S3 in a cluster. Use::

    with S3StandIn() as s3:
        s3.create_bucket("lulc-models")
        os.environ.update(s3.env())
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from moto.server import ThreadedMotoServer

ACCESS_KEY = "lulc-test-key"
SECRET_KEY = "lulc-test-secret"  # moto accepts any key pair; never a real credential


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3StandIn:
    """moto's S3 server in a background thread on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        # werkzeug (moto's HTTP server) logs every request at INFO from the server's threads, into whatever stream
        # its first record found: only warnings and errors here
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment KServe's storage initializer and boto3 read (also MLflow's S3 artifact store)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "S3_USE_HTTPS": "0",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def __enter__(self) -> S3StandIn:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
