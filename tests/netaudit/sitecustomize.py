"""Test helper: record every connection attempt and name lookup of this Python process.

Put this folder first on PYTHONPATH and set PAGELENS_NETAUDIT_LOG to a file: an audit hook
(PEP 578) appends one JSON line per ``socket.connect`` (``connect_ex`` too) /
``socket.sendto`` / ``socket.sendmsg`` (UDP, DNS to port 53 included) and per name lookup:
``socket.getaddrinfo`` / ``socket.gethostbyname`` (``_ex`` too) / ``socket.gethostbyaddr`` /
``socket.getnameinfo``. Child processes started with the same environment (``pagelens app``
execs Streamlit) record into the same file. Native code that resolves or connects without
Python's socket module (onnxruntime's telemetry did) is not seen here: ``syscalls.py`` is
the same audit at the system-call level.
"""

from __future__ import annotations

import json
import os
import sys

_LOG = os.environ.get("PAGELENS_NETAUDIT_LOG")


def _write(record: dict) -> None:
    try:
        with open(_LOG, "a", encoding="utf-8") as fh:  # noqa: PTH123
            fh.write(json.dumps(record) + "\n")
    except OSError:
        pass


def _record(event: str, host: object, port: object) -> None:
    _write({"event": event, "host": str(host), "port": port, "pid": os.getpid()})


def _hook(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, tuple) and address:
            _record(event, address[0], address[1])
    elif event == "socket.getaddrinfo":
        _record(event, args[0], args[1])
    elif event in ("socket.gethostbyname", "socket.gethostbyaddr"):
        _record(event, args[0], None)
    elif event == "socket.getnameinfo":
        address = args[0]
        _record(event, address[0] if isinstance(address, tuple) else address, None)


if _LOG:
    sys.addaudithook(_hook)
