"""The app's password, for when it is exposed beyond this computer.

``pagelens app`` refuses to listen beyond loopback without ``PAGELENS_APP_PASSWORD``
(:mod:`app.exposure`). With a password set, :class:`Gate` (installed by
:mod:`app.web.launch` in front of Streamlit's whole server) answers nothing but its login
page until the password is entered: not the page, not ``/media/*`` (page images, exported
prompts), not uploads, not the WebSocket. A right password sets an HttpOnly, SameSite=Strict
session cookie (signed with a key made at start, so a restart signs everyone out); wrong
ones slow down (:class:`Throttle`: per client, the wait doubling from 0.5 s up to 60 s, and
attempts refused while it lasts). On a loopback bind the gate also refuses any request
whose Host header is not one of the bind's names (against DNS rebinding).

:func:`require_password` is the page's own form, for a bare ``streamlit run
app/streamlit_app.py`` (no gate: it guards the page, not ``/media``); under ``pagelens app``
it steps aside. Comparisons are constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import streamlit as st

from app.exposure import Exposure, decide, is_loopback, require_secret
from app.web.launch import LOOPBACK, PASSWORD_ENV
from indexer import config
from indexer.errors import UsageError

_OK = "pagelens_authenticated"
#: Set by the launcher when :class:`Gate` guards the server (the page's form steps aside).
GATED = False
LOGIN_PATH = "_pagelens/login"
COOKIE = "pagelens_session"
#: Largest login request body read.
MAX_LOGIN_BODY = 4096


def password_ok(given: str, expected: str) -> bool:
    """Constant-time comparison of two passwords (as UTF-8 bytes)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def app_password() -> str | None:
    """``PAGELENS_APP_PASSWORD``, or None when unset or blank."""
    value = config.get(PASSWORD_ENV) or ""
    return value if value.strip() else None


def resolved_exposure(st_config: Any, *, check: bool = True) -> Exposure:
    """The exposure of the address Streamlit resolved (an unset or empty ``server.address``
    is Streamlit's every-interface default); with ``check``, :class:`UsageError` when it
    needs the password and none is set."""
    address = st_config.get_option("server.address") or "0.0.0.0"
    extra = st_config.get_option("server.allowedHosts") or []
    exposure = decide(address, extra)
    if check:
        require_secret(
            exposure,
            app_password(),
            what="the app",
            secret_name=f"a password ({PASSWORD_ENV})",
            default=LOOPBACK,
        )
    return exposure


def client_key(address: object) -> str:
    """Whom failed attempts are counted against: the client's IP address (an IPv6 client by
    its /64, which one machine may hold whole)."""
    if not isinstance(address, str):
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Throttle:
    """Failed password attempts per client: after ``n`` failures in a row, that client's
    next attempt waits ``base * 2**(n-1)`` seconds (at most ``cap``); attempts before then
    are refused without being checked. A success clears the count; so does an hour without
    failures. At most ``clients`` clients are remembered (the least recent go first)."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 60.0,
        clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap, self.clients, self.clock = base, cap, clients, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** (failures - 1)) if failures > 0 else 0.0

    def _entry(self, client: str, now: float) -> tuple[int, float]:
        count, last = self._failures.get(client, (0, now))
        if count and now - last > 3600:
            self._failures.pop(client, None)
            return 0, now
        return count, last

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        with self._lock:
            now = self.clock()
            count, last = self._entry(client, now)
            return max(0.0, last + self.delay(count) - now)

    def failed(self, client: str) -> float:
        """Count a failure; the wait it earns."""
        with self._lock:
            now = self.clock()
            count, _ = self._entry(client, now)
            self._failures[client] = (count + 1, now)
            self._failures.move_to_end(client)
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)
            return self.delay(count + 1)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


#: The process's throttle (the gate's and the page form's).
THROTTLE = Throttle()

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PageLens</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:22rem;margin:15vh auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.4rem;margin:.3rem 0;width:100%;box-sizing:border-box}}
.msg{{color:#b00020}}</style></head>
<body><h1>PageLens</h1><p class="msg">{message}</p>
<form method="post" action="{action}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
 autofocus required>
<button type="submit">Open</button></form>
<p><small>Set by {env}.</small></p></body></html>
"""

_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
]


class Gate:
    """Pure ASGI middleware in front of Streamlit's server (every HTTP request and
    WebSocket): the Host allow-list of a loopback bind, and, with a password set, the
    session cookie its login page hands out. Fails closed: exposed without a password (which
    the launcher refuses before this), it answers 503 to everything."""

    def __init__(self, app: Any, st_config: Any, *, throttle: Throttle | None = None) -> None:
        self.app = app
        self.exposure = resolved_exposure(st_config, check=False)
        self.password = app_password()
        self.closed = self.exposure.needs_secret and self.password is None
        base = (st_config.get_option("server.baseUrlPath") or "").strip("/")
        self.home = f"/{base}/" if base else "/"
        self.login_path = self.home + LOGIN_PATH
        self.throttle = throttle or THROTTLE
        self._key = secrets.token_bytes(32)

    # -- the session cookie
    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def new_token(self) -> str:
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._sign(nonce)}"

    def token_ok(self, token: str) -> bool:
        nonce, _, signature = token.partition(".")
        return bool(nonce) and hmac.compare_digest(signature, self._sign(nonce))

    @staticmethod
    def cookie_name(scope: dict) -> str:
        # Cookies are not kept apart by port: two apps on one host get one name each.
        server = scope.get("server") or (None, None)
        return f"{COOKIE}_{server[1]}" if server[1] else COOKIE

    def signed_in(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        name = self.cookie_name(scope)
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and self.token_ok(value.strip()):
                return True
        return False

    # -- ASGI
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self.closed:
            await self._refuse(scope, send, 503, "The app has no password; it answers nothing.")
            return
        if not self.exposure.answers(headers.get(b"host")):
            await self._refuse(
                scope, send, 400, "This app does not answer to that host name (Host header)."
            )
            return
        if self.password is None or self.signed_in(scope, headers):
            await self.app(scope, receive, send)
            return
        if kind == "http" and scope.get("path") == self.login_path:
            await self._login(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # 403 before the upgrade
            return
        await self._page(send, 401, "")

    async def _refuse(self, scope: dict, send: Any, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": message.encode()})

    async def _page(
        self, send: Any, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        body = _PAGE.format(
            message=html.escape(message),
            action=html.escape(self.login_path),
            env=html.escape(PASSWORD_ENV),
        ).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [*_HEADERS, *extra]}
        )
        await send({"type": "http.response.body", "body": body})

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("method") != "POST":
            await self._page(send, 401, "")
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                await self._page(send, 413, "That request is too large.")
                return
        client = client_key((scope.get("client") or ("",))[0])
        wait = self.throttle.wait(client)
        if wait > 0:
            seconds = max(1, round(wait + 0.49))
            await self._page(
                send,
                429,
                f"Too many wrong passwords: try again in {seconds} s.",
                [(b"retry-after", str(seconds).encode())],
            )
            return
        given = parse_qs(body.decode("utf-8", "replace")).get("password", [""])[0]
        assert self.password is not None
        if not password_ok(given, self.password):
            self.throttle.failed(client)
            await self._page(send, 401, "Wrong password.")
            return
        self.throttle.succeeded(client)
        cookie = f"{self.cookie_name(scope)}={self.new_token()}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", self.home.encode()),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _page_exposure_refusal() -> str | None:
    """Why the page must show nothing to this client: a bare ``streamlit run`` (which no
    launcher checked) serving beyond loopback without a password, seen from another
    machine."""
    ip = st.context.ip_address
    if not isinstance(ip, str) or is_loopback(ip):  # this computer, or no server (AppTest)
        return None
    try:
        resolved_exposure(st)
    except UsageError as exc:
        return str(exc)
    return None


def require_password() -> bool:
    """True when the session may see the app: the gate checked it already, or no password is
    needed (loopback, none set), or it was entered in the page's form."""
    if GATED:
        return True
    refusal = _page_exposure_refusal()
    if refusal:
        st.error(refusal)
        return False
    expected = app_password()
    if not expected or st.session_state.get(_OK):
        return True
    st.title("PageLens")
    with st.form("pagelens-login"):
        given = st.text_input("Password", type="password", help=f"Set by {PASSWORD_ENV}.")
        submitted = st.form_submit_button("Open")
    if submitted:
        client = client_key(st.context.ip_address)
        time.sleep(THROTTLE.wait(client))  # this session waits out its client's failures
        if password_ok(given or "", expected):
            THROTTLE.succeeded(client)
            st.session_state[_OK] = True
            st.rerun()
        THROTTLE.failed(client)
        st.error("Wrong password.")
    return False
