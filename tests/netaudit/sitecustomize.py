"""Test helper: record every outbound connection attempt of this Python process.

Put this folder first on PYTHONPATH and set PAGELENS_NETAUDIT_LOG to a file: an audit hook
(PEP 578) appends one JSON line per ``socket.connect`` / ``socket.connect_ex`` /
``socket.sendto`` / ``socket.getaddrinfo`` event. Child processes started with the same
environment (``pagelens app`` execs Streamlit) record into the same file. Native code that
opens sockets without Python's socket module is not seen (none of PageLens' own paths).
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


def _hook(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, tuple) and address:
            _write(
                {"event": event, "host": str(address[0]), "port": address[1], "pid": os.getpid()}
            )
    elif event == "socket.getaddrinfo":
        _write({"event": event, "host": str(args[0]), "port": args[1], "pid": os.getpid()})


if _LOG:
    sys.addaudithook(_hook)
