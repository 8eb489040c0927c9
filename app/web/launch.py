"""How ``pagelens app`` starts Streamlit so that nothing leaves the machine by default.

Streamlit on its own listens on every interface (anyone on the network could browse and
delete a user's documents), sends usage statistics, looks up the machine's external IP at
``checkip.amazonaws.com`` and a LAN address by "connecting" a UDP socket to 8.8.8.8, and
shows a "Deploy" button. PageLens turns all of that off:

* it listens on ``127.0.0.1`` unless another address is asked for: ``--host``, or the
  address Streamlit itself would take (its ``--server.address`` flag, the last one given,
  an empty one meaning every interface; else ``STREAMLIT_SERVER_ADDRESS``; else
  ``server.address`` in ``~/.streamlit/config.toml``, ``./.streamlit/config.toml`` or the
  script's own). Any address but loopback requires ``PAGELENS_APP_PASSWORD``
  (:mod:`app.exposure`, the rule ``serve`` and ``mcp`` follow too), and a loud warning says
  the app is exposed. The address decided is passed on as the one ``--server.address``;
* inside the Streamlit process, :func:`main` checks the address Streamlit really resolved,
  once every flag, variable and config file is read, before anything binds, and puts
  :class:`app.web.auth.Gate` in front of Streamlit's whole server: with a password set
  nothing (page, ``/media/*``, uploads, the WebSocket) answers without the session cookie
  its login page sets, wrong passwords slow down (per client, exponentially, bounded), and a
  loopback bind answers only to its own Host names;
* usage statistics off, headless (no browser auto-open, no first-run e-mail prompt),
  toolbar in "minimal" mode (no Deploy button);
* Streamlit's two IP look-ups are replaced by local answers before the server starts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.exposure import LOOPBACK_NAMES, decide, require_secret
from app.exposure import is_loopback as is_loopback  # re-exported
from indexer import config
from indexer.config import APP_PASSWORD_ENV
from indexer.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the check inside the Streamlit process remains
    tomllib = None

LOOPBACK = "127.0.0.1"
PASSWORD_ENV = APP_PASSWORD_ENV
ADDRESS = "server.address"
ADDRESS_ENV = "STREAMLIT_SERVER_ADDRESS"
#: Streamlit settings PageLens always sets (a user's explicit command-line option wins).
PRIVATE_DEFAULTS = {
    "browser.gatherUsageStats": "false",
    "server.headless": "true",
    "client.toolbarMode": "minimal",
    "global.showWarningOnDirectExecution": "false",
}


@dataclass
class AppLaunch:
    """The Streamlit command line and environment for one ``pagelens app`` run."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = LOOPBACK
    exposed: bool = False
    warning: str | None = None


def _given(args: Sequence[str], name: str) -> str | None:
    """The value Streamlit (click) takes for ``--name VALUE`` / ``--name=VALUE``: the last one
    given (``""`` for an empty one), None when absent. Arguments after ``--`` are the
    script's."""
    flag = f"--{name}"
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _without(args: Sequence[str], name: str) -> list[str]:
    """``args`` without any ``--name VALUE`` / ``--name=VALUE`` before ``--``."""
    flag = f"--{name}"
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def config_files(script: str, environ: Mapping[str, str]) -> list[Path]:
    """Streamlit's config files, in the order it reads them (a later one wins): the user's,
    the working folder's, the script's folder's."""
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    files = [home / ".streamlit" / "config.toml", Path.cwd() / ".streamlit" / "config.toml"]
    own = Path(script).resolve().parent / ".streamlit" / "config.toml"
    return files + ([own] if own not in [f.resolve() for f in files] else [])


def configured_address(script: str, environ: Mapping[str, str]) -> str | None:
    """``server.address`` as Streamlit's config files set it (None: not set)."""
    address = None
    if tomllib is None:
        return None
    for path in config_files(script, environ):
        try:
            section = tomllib.loads(path.read_text(encoding="utf-8")).get("server") or {}
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read Streamlit's config file {path}: {exc}") from exc
        if isinstance(section, dict) and section.get("address") is not None:
            address = str(section["address"])
    return address


def requested_address(
    script: str, args: Sequence[str], host: str | None, environ: Mapping[str, str]
) -> str:
    """The address the app is asked to listen on, decided as Streamlit decides it (flag,
    the last one; variable; config files), with ``--host`` first and 127.0.0.1 (not
    Streamlit's every-interface default) when nothing asks."""
    explicit = _given(args, ADDRESS)
    if host is not None and explicit is not None and host != explicit:
        raise UsageError(f"--host {host} and --server.address {explicit} disagree; give one.")
    for value in (host, explicit, environ.get(ADDRESS_ENV) or None):
        if value is not None:
            return value
    found = configured_address(script, environ)
    return LOOPBACK if found is None else found


def plan(
    script: str,
    args: Sequence[str],
    *,
    host: str | None = None,
    environ: Mapping[str, str],
) -> AppLaunch:
    """Decide the address and private settings; :class:`UsageError` if exposed without a
    password (before anything starts)."""
    exposure = decide(requested_address(script, args, host, environ))
    address = exposure.address  # an empty address is every interface: say so
    args = [*_without(args, ADDRESS), f"--{ADDRESS}", address]
    for name, value in PRIVATE_DEFAULTS.items():
        if _given(args, name) is None:
            args += [f"--{name}", value]
    if exposure.loopback and _given(args, "server.allowedHosts") is None:
        if not environ.get("STREAMLIT_SERVER_ALLOWED_HOSTS"):
            # Against DNS rebinding: a web page that points its own name at 127.0.0.1 must
            # not reach the app's WebSocket (Streamlit checks Host against this list; the
            # gate, app.web.auth, checks every request against the same names).
            names = [*LOOPBACK_NAMES, address.strip("[]").lower()]
            for name in dict.fromkeys(names):
                args += ["--server.allowedHosts", name]
    launch = AppLaunch(args=["run", script, *args], host=address, exposed=not exposure.loopback)
    require_secret(
        exposure,
        config.get(PASSWORD_ENV, environ),
        what="the app",
        secret_name=f"a password ({PASSWORD_ENV}; everyone must enter it)",
        default=LOOPBACK,
    )
    if launch.exposed:
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


def _guard_streamlit() -> None:
    """Check the address Streamlit resolved (flags, variables, config files) before it
    binds, and put :class:`app.web.auth.Gate` in front of its server. Fails closed: a
    Streamlit whose server cannot be wrapped does not start."""
    from streamlit import config as st_config
    from streamlit.web import bootstrap

    from app.web import auth

    starlette_server: Any = None
    try:
        from streamlit.web.server.starlette import starlette_server
    except ImportError:  # an older Streamlit (Tornado): the page's own form is all there is
        pass
    if not hasattr(starlette_server, "create_starlette_app"):
        if auth.app_password():
            raise SystemExit(
                "error: this Streamlit cannot be guarded by PageLens's password gate (it "
                "predates its Starlette server); upgrade it: pip install -U streamlit"
            )
        starlette_server = None
    run = bootstrap.run

    def checked_run(*args, **kwargs):  # after Streamlit read every flag and config file
        try:
            auth.resolved_exposure(st_config)
        except UsageError as exc:
            raise SystemExit(f"error: {exc}") from None
        return run(*args, **kwargs)

    bootstrap.run = checked_run
    if starlette_server is None:
        return
    create_app = starlette_server.create_starlette_app

    def gated_app(*args, **kwargs):
        gate = auth.Gate(create_app(*args, **kwargs), st_config)
        # Only once the gate is really in front of the server does the page's own password
        # form step aside (a Streamlit serving some other way keeps the form).
        auth.GATED = True
        return gate

    starlette_server.create_starlette_app = gated_app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.web.launch run SCRIPT [streamlit options]``: Streamlit, private and
    guarded."""
    _local_only_lookups()
    _guard_streamlit()
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", *(sys.argv[1:] if argv is None else argv)]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main()
