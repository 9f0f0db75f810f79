"""An S3-compatible object store on loopback for the tests: moto's server, behind a small TCP
proxy that can be taken down and brought back (the store's contents stay) to play a store
that is away.

`s3_store` (a fixture) points this test process's audio storage at it; `S3Store.env()` is
what a web or worker process started by the test needs to use it too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lingoloop import object_store
from tests.proxy import TcpProxy

ACCESS_KEY = "lingoloop-test"
SECRET_KEY = "lingoloop-test-secret"
REGION = "us-east-1"


class S3Store:
    """A running moto server with one fresh bucket, reached through a tests.proxy.TcpProxy."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._proxy = TcpProxy((host, port))
        self.bucket = f"lingoloop-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=self.bucket)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._proxy.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self._server.get_host_and_port()[1]}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def storage_entry(self) -> dict[str, Any]:
        """STORAGES["audio"] for this store, as AUDIO_STORAGE=s3 builds it."""
        return object_store.s3_storage(
            bucket=self.bucket,
            endpoint_url=self.endpoint_url,
            region=REGION,
            prefix="lingoloop",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            addressing_style="path",
            timeout_seconds=2,
        )

    def env(self) -> dict[str, str]:
        """The environment of a process that keeps its audio here."""
        return {
            "AUDIO_STORAGE": "s3",
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION": REGION,
            "S3_PREFIX": "lingoloop",
            "S3_ACCESS_KEY_ID": ACCESS_KEY,
            "S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "S3_TIMEOUT_SECONDS": "2",
        }

    def objects(self) -> list[str]:
        """Every object name in the bucket (read past the proxy: works while it is down)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def down(self) -> None:
        self._proxy.down()

    def up(self) -> None:
        self._proxy.up()

    @contextlib.contextmanager
    def away(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    def stop(self) -> None:
        self._proxy.down()
        self._server.stop()


@pytest.fixture
def s3_store(settings) -> Iterator[S3Store]:  # type: ignore[no-untyped-def]
    """A fresh bucket on a local S3 server, which this test process's audio storage uses."""
    store = S3Store()
    settings.AUDIO_STORAGE = "s3"
    settings.STORAGES = {**settings.STORAGES, "audio": store.storage_entry()}
    try:
        yield store
    finally:
        store.stop()
