"""Starts ``--ray local`` as the CLI does and prints, as one JSON line, what the instance
exposes: every TCP socket listening and UDP socket bound in this process and the processes
Ray started (read from /proc, as ``ss -lntup`` would), whether the GCS answers a call that
carries no token, and what changed in this process's environment.

Run by tests/test_ray.py in a subprocess of its own (its own Ray instance and ``HOME``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: /proc/net state of a listening TCP socket; UDP sockets count when bound at all.
TCP_LISTEN = "0A"


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it (Ray's GCS, raylet, agents and workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(parents.get(pid, []))
    return tree


def socket_inodes(pids: set[int]) -> dict[str, int]:
    """The socket inodes the processes hold, each with one pid holding it."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def decode(address: str) -> tuple[str, int]:
    """``0100007F:1F90`` or a 32-digit IPv6 form from /proc/net/* as (ip, port)."""
    import ipaddress

    host, port = address.split(":")
    raw = bytes.fromhex(host)
    # /proc writes each 32-bit word in the machine's byte order (little-endian here).
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(port, 16)


def exposed(pids: set[int]) -> list[dict[str, object]]:
    inodes = socket_inodes(pids)
    found: list[dict[str, object]] = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes or (table.startswith("tcp") and state != TCP_LISTEN):
                continue
            ip, port = decode(local)
            pid = inodes[inode]
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "?"
            found.append({"table": table, "ip": ip, "port": port, "pid": pid, "name": name})
    return found


def gcs_without_token(address: str) -> str:
    """The status of a GCS call that carries no token ("OK" if it is answered)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetAllNodeInfoRequest()  # type: ignore[attr-defined]
            stub.GetAllNodeInfo(request, timeout=20)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def main() -> None:
    import ray

    from indexer.ray import RayOptions, connect

    before = dict(os.environ)
    connect("local", options=RayOptions(num_cpus=1, object_store_mb=128))
    changed = {
        name: os.environ.get(name)
        for name in set(before) | set(os.environ)
        if before.get(name) != os.environ.get(name)
    }
    try:

        @ray.remote(num_cpus=0.25)
        def plus_one(x: int) -> int:
            return x + 1

        @ray.remote(num_cpus=0.25)
        class Echo:
            def echo(self, x: int) -> int:
                return x

        # A task and an actor, so that workers the raylet starts after ray.init are running.
        echo = Echo.remote()  # type: ignore[attr-defined]
        assert ray.get([plus_one.remote(1), echo.echo.remote(2)], timeout=120) == [2, 2]
        report = {
            "sockets": exposed(process_tree(os.getpid())),
            "gcs_without_token": gcs_without_token(ray.get_runtime_context().gcs_address),
            "environment_changed": changed,
        }
    finally:
        ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
