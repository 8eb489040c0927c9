"""The one exposure rule of ``pagelens serve``, ``pagelens app`` and ``pagelens mcp --http``.

* A **loopback** bind (``localhost``, 127.0.0.0/8, ``::1``) needs no secret, and answers
  only to its own names (a Host allow-list: the loopback names, the bound address, and
  names the operator adds), so a web page whose name was rebound to 127.0.0.1 (DNS
  rebinding) cannot use it.
* **Anything else** (a LAN address, ``0.0.0.0``, ``::``, an empty address, which means every
  interface, or a host name, which may resolve anywhere) needs a secret: the API key of
  ``serve`` and ``mcp``, the password of the app. Without one the command refuses to start.

:func:`decide` says what a bind is; :func:`require_secret` refuses one that needs a secret
it does not have. No imports beyond the standard library and :mod:`indexer.errors`, so the
Streamlit process and the CLI use the same function.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from indexer.errors import UsageError

#: Host names that always mean this machine.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: What an empty address binds (every IPv4 interface).
ALL_INTERFACES = "0.0.0.0"


def bind_address(host: str | None) -> str:
    """The address a server binds for ``host``: an empty one means every interface."""
    host = (host or "").strip()
    return host or ALL_INTERFACES


def is_loopback(host: str | None) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``);
    False for an empty address (every interface) and for any other name."""
    host = bind_address(host).strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str | bytes) -> str:
    """The name part of a Host header, lower-cased, without the port or IPv6 brackets."""
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    text = text.strip().lower()
    if text.startswith("["):  # [v6]:port
        return text[1:].split("]", 1)[0]
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name.rstrip(".")


@dataclass(frozen=True)
class Exposure:
    """What one bind is: its address, whether it is loopback, the Host names it answers to."""

    address: str
    loopback: bool
    #: Host names a loopback bind answers to; None beyond loopback (the secret guards it).
    allowed_hosts: frozenset[str] | None

    @property
    def needs_secret(self) -> bool:
        return not self.loopback

    def answers(self, host_header: str | bytes | None) -> bool:
        """Whether a request with this ``Host`` header may be answered (always True beyond
        loopback; ``*`` in the list turns the check off, ``*.example.com`` allows
        sub-domains)."""
        if self.allowed_hosts is None:
            return True
        name = host_name(host_header or "")
        for allowed in self.allowed_hosts:
            if allowed == "*" or name == allowed:
                return True
            if allowed.startswith("*.") and name.endswith(allowed[1:]):
                return True
        return False


def decide(host: str | None, extra_hosts: Iterable[str] = ()) -> Exposure:
    """The exposure of a bind on ``host`` (``extra_hosts``: more names a loopback bind
    answers to, e.g. ``--allow-host``)."""
    address = bind_address(host)
    if not is_loopback(address):
        return Exposure(address=address, loopback=False, allowed_hosts=None)
    names = {*LOOPBACK_NAMES, address.strip("[]").lower()}
    names |= {host_name(h) if not h.startswith("*") else h.lower() for h in extra_hosts if h}
    return Exposure(address=address, loopback=True, allowed_hosts=frozenset(names))


def require_secret(
    exposure: Exposure, secret: str | None, *, what: str, secret_name: str, default: str
) -> None:
    """:class:`UsageError` when ``exposure`` needs a secret and ``secret`` is unset or blank:
    one line saying what to set, or how to stay on this machine."""
    if exposure.needs_secret and not (secret or "").strip():
        raise UsageError(
            f"{what} would listen on {exposure.address}, reachable from other machines, "
            f"without {secret_name}: set it, or leave --host out to stay on this computer "
            f"({default})."
        )
