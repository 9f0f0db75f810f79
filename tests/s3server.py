"""An S3-compatible object store on loopback for the tests: moto's server, behind a small TCP
proxy that can be taken down and brought back (the store's contents stay) to play a store
that is away.

`s3_store` (a fixture) points this test process's audio storage at it; `S3Store.env()` is
what a web or worker process started by the test needs to use it too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lingoloop import object_store

ACCESS_KEY = "lingoloop-test"
SECRET_KEY = "lingoloop-test-secret"
REGION = "us-east-1"


class PausableProxy:
    """Forwards TCP connections from its own port to `target`. `down()` closes the port and
    every open connection (clients are refused, as by a store that stopped); `up()` listens
    on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


class S3Store:
    """A running moto server with one fresh bucket, reached through a PausableProxy."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._proxy = PausableProxy((host, port))
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
