"""A real S3-compatible server (moto's standalone server) on a free loopback port.

PageLens reaches it the way a user reaches MinIO, Ceph or R2: ``s3://bucket/prefix`` as the
image location, ``AWS_ENDPOINT_URL`` and the ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` pair in the environment (:meth:`S3Server.env`). A
:class:`~tests.support.tcp_proxy.TcpProxy` in front lets a test make the endpoint fail and come back
with its objects intact (moto keeps them in memory, so killing it would lose them).
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

from tests.support.milvus_server import free_port
from tests.support.tcp_proxy import TcpProxy

KEY_ID, SECRET = "pagelens-test-key", "pagelens-test-secret"


def moto_command() -> list[str] | None:
    """moto's ``moto_server`` next to this Python, or None when moto is not installed."""
    exe = Path(sys.executable).with_name("moto_server")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("moto_server")
    return [found] if found else None


class S3Server:
    """``moto_server -H 127.0.0.1 -p P`` as a child process, behind a failable proxy."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.proxy: TcpProxy | None = None

    @property
    def endpoint(self) -> str:
        """The URL clients use (through the proxy)."""
        assert self.proxy is not None
        return f"http://{self.proxy.address}"

    @property
    def direct_endpoint(self) -> str:
        """The server itself, bypassing the proxy (for a test's own look at the bucket)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a user sets for an S3-compatible server (no AWS config files, no IMDS)."""
        missing = str(self.log_path.with_name("no-aws-config"))
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60) -> S3Server:
        cmd = moto_command()
        if cmd is None:
            raise RuntimeError("moto is not installed (pip install 'moto[server]')")
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("moto_server did not start listening in time")
        self.proxy = TcpProxy(("127.0.0.1", self.port)).start()
        return self

    def client(self):
        """A boto3 S3 client straight to the server (test bookkeeping only)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.direct_endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (paginated)."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()
