"""Test helper: the network and file audit at the system-call level, with strace.

Python's audit hook (``sitecustomize.py`` here) sees what goes through Python's socket
module; native code does not: onnxruntime's telemetry resolves its host with glibc from a
thread of its own and writes its device id with SQLite. strace sees every process and thread
(``-f``, Streamlit's exec included), so a command run under :func:`command` and read back
with :func:`read` yields

* **contacts**: every ``connect``/``sendto``/``sendmsg``/``sendmmsg`` to an IPv4/IPv6
  address; a send to port 53 is a DNS query, whatever the address (a local stub resolver
  such as 127.0.0.53 forwards it to the network);
* **writes**: every path opened for writing or created, made or renamed into.

Only the system calls named in :data:`TRACE` are stopped (``--seccomp-bpf``), so the
processes run at nearly full speed.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TRACE = (
    "connect,sendto,sendmsg,sendmmsg,"
    "open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,"
    "symlink,symlinkat"
)

_LINE = re.compile(r"^(?P<pid>\d+) (?P<call>\w+)\((?P<args>.*)\) += (?P<result>-?\d+)(?P<rest>.*)$")
_NET = re.compile(r"^(?P<pid>\d+) (?P<call>connect|sendto|sendmsg|sendmmsg)\((?P<args>.*)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_OPEN_PATH = re.compile(r'^\s*(?:-?\d+|AT_FDCWD)(?:<(?P<dir>[^>]*)>)?, "(?P<path>[^"]*)"')
_RESULT_PATH = re.compile(r"^<(?P<path>[^>]*)>")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_QUOTED = re.compile(r'"([^"]*)"')
_AT_PATH = re.compile(r'(?:(?:-?\d+|AT_FDCWD)<([^>]*)>, )?"([^"]*)"')


@dataclass(frozen=True)
class Contact:
    pid: int
    call: str
    host: str
    port: int

    @property
    def dns(self) -> bool:
        return self.port == 53

    @property
    def local(self) -> bool:
        """Loopback and not a name lookup."""
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback and not self.dns
        except ValueError:
            return False


@dataclass(frozen=True)
class Write:
    pid: int
    call: str
    path: str


@functools.cache
def usable() -> bool:
    """strace is installed and may trace this user's children (not in every container)."""
    if not shutil.which("strace"):
        return False
    try:
        probe = subprocess.run(
            ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=openat", "-o", os.devnull,
             "true"],
            capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def command(argv: list[str], log: Path) -> list[str]:
    """``argv`` run under strace, its record added to ``log`` (read it with :func:`read`)."""
    return [
        "strace", "-f", "-qq", "--seccomp-bpf", "-y", "-s", "256", "-A",
        "-e", f"trace={TRACE}", "-e", "signal=none", "-o", str(log), *argv,
    ]  # fmt: skip


def _resolve(path: str, base: str | None, cwd: Path) -> str:
    joined = os.path.join(base or str(cwd), path)  # an absolute path stays itself
    return os.path.normpath(joined)


def _lines(log: Path) -> list[str]:
    """The record's calls, one a line: a call another thread interrupted (``<unfinished
    ...>``, then ``<... call resumed>``) is joined back together."""
    pending: dict[str, str] = {}
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
        elif rest.startswith("<... "):
            head = pending.pop(pid, "")
            lines.append(f"{pid} {head}{rest.split('resumed>', 1)[-1]}")
        else:
            lines.append(f"{pid} {rest}")
    return lines


def read(log: Path, cwd: Path) -> tuple[list[Contact], list[Write]]:
    """The contacts and writes in a strace record (relative paths against ``cwd``)."""
    contacts: list[Contact] = []
    writes: list[Write] = []
    if not log.exists():
        return contacts, writes
    for line in _lines(log):
        net = _NET.match(line)
        if net:  # an attempt is the leak: counted whether or not it succeeded
            port, addr = _PORT.search(net["args"]), _ADDR.search(net["args"])
            if "sa_family=AF_INET" in net["args"] and port and addr:
                host = addr[1] or addr[2]
                contacts.append(Contact(int(net["pid"]), net["call"], host, int(port[1])))
            continue
        m = _LINE.match(line)
        if not m or int(m["result"]) < 0:
            continue  # a refused file call changes nothing
        pid, call, args = int(m["pid"]), m["call"], m["args"]
        if call in ("open", "openat", "openat2", "creat"):
            if call != "creat" and not any(f in args for f in _WRITE_FLAGS):
                continue
            done = _RESULT_PATH.match(m["rest"].strip())
            opened = _OPEN_PATH.match(args) if call.startswith("openat") else None
            quoted = _QUOTED.search(args)
            if done:
                writes.append(Write(pid, call, done["path"]))
            elif opened:
                writes.append(Write(pid, call, _resolve(opened["path"], opened["dir"], cwd)))
            elif quoted:
                writes.append(Write(pid, call, _resolve(quoted.group(1), None, cwd)))
            continue
        paths = _AT_PATH.findall(args)  # (folder of a *at call's fd, path)
        if paths:  # mkdir: the new folder; rename/link/symlink: the new name (the last)
            folder, path = paths[-1]
            writes.append(Write(pid, call, _resolve(path, folder or None, cwd)))
    return contacts, writes


def outside(writes: list[Write], allowed: list[Path], forbidden: list[Path]) -> list[Write]:
    """The writes under a ``forbidden`` folder, or under none of the ``allowed`` ones
    (device files such as /dev/null and /dev/shm, and /proc/self, always allowed)."""

    def under(path: str, roots: list[Path]) -> bool:
        return any(path == str(r) or path.startswith(str(r).rstrip("/") + "/") for r in roots)

    always = [Path("/dev"), Path("/proc"), Path("/sys/fs/cgroup")]
    return [
        w
        for w in writes
        if under(w.path, [p.resolve() for p in forbidden])
        or not under(w.path, [p.resolve() for p in allowed] + always)
    ]
