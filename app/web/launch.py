"""How ``pagelens app`` starts Streamlit so that nothing leaves the machine by default.

Streamlit on its own listens on every interface (anyone on the network could browse and
delete a user's documents), sends usage statistics, looks up the machine's external IP at
``checkip.amazonaws.com`` and a LAN address by "connecting" a UDP socket to 8.8.8.8, and
shows a "Deploy" button. PageLens turns all of that off:

* it listens on ``127.0.0.1`` unless another address is asked for explicitly (``--host``
  or Streamlit's ``--server.address``); then ``PAGELENS_APP_PASSWORD`` is required (the
  page asks for it and compares it in constant time, see :mod:`app.web.auth`) and a loud
  warning says the app is exposed;
* usage statistics off, headless (no browser auto-open, no first-run e-mail prompt),
  toolbar in "minimal" mode (no Deploy button);
* Streamlit runs through :func:`main` here, which replaces its two IP look-ups by local
  answers before the server starts.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from indexer import config
from indexer.config import APP_PASSWORD_ENV
from indexer.errors import UsageError

LOOPBACK = "127.0.0.1"
PASSWORD_ENV = APP_PASSWORD_ENV
#: Host names a loopback app answers to (``server.allowedHosts``; ports are ignored).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Streamlit settings PageLens always sets (a user's explicit command-line option wins).
PRIVATE_DEFAULTS = {
    "browser.gatherUsageStats": "false",
    "server.headless": "true",
    "client.toolbarMode": "minimal",
    "global.showWarningOnDirectExecution": "false",
}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class AppLaunch:
    """The Streamlit command line and environment for one ``pagelens app`` run."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = LOOPBACK
    exposed: bool = False
    warning: str | None = None


def _given(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among Streamlit's options."""
    flag = f"--{name}"
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def plan(
    script: str,
    args: Sequence[str],
    *,
    host: str | None = None,
    environ: Mapping[str, str],
) -> AppLaunch:
    """Decide the address and private settings; :class:`UsageError` if exposed without a
    password (before anything starts)."""
    args = list(args)
    explicit = _given(args, "server.address")
    env_host = environ.get("STREAMLIT_SERVER_ADDRESS")
    if host and explicit and host != explicit:
        raise UsageError(f"--host {host} and --server.address {explicit} disagree; give one.")
    address = host or explicit or env_host or LOOPBACK
    if explicit is None:
        args += ["--server.address", address]
    for name, value in PRIVATE_DEFAULTS.items():
        if _given(args, name) is None:
            args += [f"--{name}", value]
    exposed = not is_loopback(address)
    if not exposed and _given(args, "server.allowedHosts") is None:
        if not environ.get("STREAMLIT_SERVER_ALLOWED_HOSTS"):
            # Against DNS rebinding: a web page that points its own name at 127.0.0.1 must
            # not reach the app's WebSocket (Streamlit checks Host against this list).
            for name in LOOPBACK_NAMES:
                args += ["--server.allowedHosts", name]
    launch = AppLaunch(args=["run", script, *args], host=address, exposed=exposed)
    if exposed:
        if not config.get(PASSWORD_ENV, environ):
            raise UsageError(
                f"the app would listen on {address}, reachable from other machines, without a "
                f"password: set {PASSWORD_ENV} (everyone must enter it), or leave --host "
                f"out to keep the app on this computer ({LOOPBACK})."
            )
        port = _given(args, "server.port") or environ.get("STREAMLIT_SERVER_PORT") or "8501"
        launch.warning = (
            f"WARNING: the PageLens app is EXPOSED on http://{address}:{port} (not only this "
            f"computer). Anyone who can reach it and knows {PASSWORD_ENV} can read, add and "
            "delete your documents; traffic is plain HTTP (use a TLS proxy on untrusted "
            "networks)."
        )
    return launch


def _local_only_lookups() -> None:
    """Replace Streamlit's IP look-ups (HTTP to checkip.amazonaws.com; a UDP "connect" to
    8.8.8.8) by no answer: they only decorate start-up URLs and origin checks, and the
    address PageLens binds is always known."""
    from streamlit import net_util

    net_util.get_external_ip = lambda: None
    net_util.get_internal_ip = lambda: None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.web.launch run SCRIPT [streamlit options]``: Streamlit, private."""
    _local_only_lookups()
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", *(sys.argv[1:] if argv is None else argv)]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main()
