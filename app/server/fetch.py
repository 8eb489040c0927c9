"""The guarded URL fetcher: downloads images from public http(s) addresses only (anti-SSRF).

Used only when the server runs with ``--allow-url-images``. It is its own module (with its
own tests, ``tests/test_fetch.py``) because every rule in it is a security boundary.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from app.server.errors import ApiError, too_large
from app.server.limits import MAX_IMAGE_BYTES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class _Hop:
    """One checked request: the pinned address to connect to and the name it stands for."""

    target: str  # the URL with the checked address in place of the host name
    host_header: str
    sni: str | None


class UrlImageFetcher:
    """Downloads images from public http(s) URLs only (a guard against SSRF).

    Every hop (the URL and each redirect) is resolved with DNS and refused unless *all* its
    addresses are public (not private, loopback, link-local, multicast, reserved, shared or
    unspecified; IPv4-mapped IPv6 is checked as IPv4). The connection then goes to the
    checked address itself (Host header and TLS SNI keep the name), so a DNS answer that
    changes between check and connect cannot redirect it. Redirects are followed by hand, at
    most ``max_redirects``, each re-checked; the whole fetch has a time limit and a size limit.
    Proxies from the environment are ignored.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_redirects: int = 3,
        transport: Any = None,
    ) -> None:
        self.timeout = float(timeout)
        self.max_redirects = int(max_redirects)
        self.transport = transport

    @staticmethod
    def is_public(ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return UrlImageFetcher.is_public(ip.ipv4_mapped)
            if ip.sixtofour is not None and not UrlImageFetcher.is_public(ip.sixtofour):
                return False
            if ip.teredo is not None:
                return False
        return bool(
            ip.is_global
            and not (
                ip.is_private
                or ip.is_loopback
                or ip.is_link_local
                or ip.is_multicast
                or ip.is_reserved
                or ip.is_unspecified
            )
        )

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out = []
        for info in infos:
            addr = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            out.append(ipaddress.ip_address(addr))
        return out

    def allowed_addresses(self, host: str, port: int) -> list[IPAddress]:
        """The host's addresses if all are public; raises ApiError otherwise."""
        try:
            addresses = self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise _url_error(f"cannot resolve {host!r} ({exc})") from exc
        if not addresses:
            raise _url_error(f"{host!r} has no address")
        bad = [str(a) for a in addresses if not self.is_public(a)]
        if bad:
            raise ApiError(
                400,
                f"Image URL host {host!r} resolves to a non-public address ({', '.join(bad)}); "
                "only public addresses may be fetched.",
                code="image_url_not_allowed",
            )
        return addresses

    def fetch(
        self, url: str, *, param: str | None = None, max_bytes: int = MAX_IMAGE_BYTES
    ) -> bytes:
        """The body of ``url`` (at most ``max_bytes``); ApiError (400) for any refusal."""
        try:
            return self._fetch(url, max_bytes)
        except ApiError as exc:
            exc.param = param
            raise

    def check_hop(self, url: str) -> _Hop:
        """Refuse anything but a plain http(s) URL to a public address; pin that address."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _url_error(f"only http and https URLs can be fetched, not {scheme!r}")
        if parts.username or parts.password:
            raise _url_error("URLs with user names or passwords are refused")
        host = parts.hostname
        if not host:
            raise _url_error("the URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise _url_error(f"bad port ({exc})") from exc
        ip = self.allowed_addresses(host, port)[0]
        ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
        target = urllib.parse.urlunsplit(
            (scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, "")
        )
        host_header = host if parts.port is None else f"{host}:{port}"
        return _Hop(target, host_header, host if scheme == "https" else None)

    def _fetch(self, url: str, max_bytes: int) -> bytes:
        import httpx

        deadline = time.monotonic() + self.timeout
        current = url
        with httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            transport=self.transport,
        ) as client:
            for _hop in range(self.max_redirects + 1):
                hop = self.check_hop(current)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _url_error(f"timed out after {self.timeout:g}s")
                extensions: dict[str, Any] = {"timeout": httpx.Timeout(remaining).as_dict()}
                if hop.sni:
                    extensions["sni_hostname"] = hop.sni
                request = client.build_request(
                    "GET",
                    hop.target,
                    headers={"Host": hop.host_header, "Accept": "image/*"},
                    extensions=extensions,
                )
                try:
                    response = client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise _url_error(f"cannot fetch {current} ({_short(exc)})") from exc
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise _url_error("a redirect without a Location")
                        current = urllib.parse.urljoin(current, location)
                        continue
                    return self._read(response, current, max_bytes, deadline)
                except httpx.HTTPError as exc:
                    raise _url_error(f"cannot fetch {current} ({_short(exc)})") from exc
                finally:
                    response.close()
        raise _url_error(f"more than {self.max_redirects} redirects")

    def _read(self, response: Any, url: str, max_bytes: int, deadline: float) -> bytes:
        """The body of a final (non-redirect) answer, within the size and time limits."""
        if response.status_code != 200:
            raise _url_error(f"{url} answered HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise too_large(None, f"{declared} bytes, more than {max_bytes}")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(None, f"more than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _url_error(f"timed out after {self.timeout:g}s")
            chunks.append(chunk)
        return b"".join(chunks)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _url_error(message: str) -> ApiError:
    return ApiError(400, f"Image URL refused: {message}.", code="invalid_image_url")
