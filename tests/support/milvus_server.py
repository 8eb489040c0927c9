"""A real milvus-lite gRPC server on a free loopback port, for the Milvus engine's tests.

PageLens connects to it with pymilvus over the network (``http://127.0.0.1:PORT``), the same
client path as Milvus Standalone, Distributed and Zilliz Cloud.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def milvus_lite_command() -> list[str] | None:
    """The milvus-lite CLI next to this Python, or None when the milvus extra is missing."""
    exe = Path(sys.executable).with_name("milvus-lite")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("milvus-lite")
    return [found] if found else None


class MilvusServer:
    """``milvus-lite server --data-dir D --host 127.0.0.1 --port P`` as a child process."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MilvusServer:
        cmd = milvus_lite_command()
        if cmd is None:
            raise RuntimeError("milvus-lite is not installed (pip install 'pagelens[milvus]')")
        self.log = open(self.data_dir.with_suffix(".log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *cmd,
                "server",
                "--data-dir",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("milvus-lite did not start listening in time")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()
