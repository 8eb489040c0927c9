"""A TCP proxy on a free loopback port, for the Milvus TLS/token and S3 fault tests.

* ``TLS``: it terminates TLS (a private CA and server certificate made by
  :func:`make_ca`, ALPN ``h2`` because gRPC insists on it) in front of milvus-lite, which
  has no TLS of its own: the client speaks ``milvuss://`` exactly as to a TLS Milvus.
* ``tap``: the plaintext bytes each client connection sends (after TLS termination) are
  decoded as HTTP/2 by :class:`H2Tap` (a server-side ``h2`` connection fed those bytes), so
  a test sees the request headers, ``authorization`` included, that pymilvus really sent.
* ``fail()`` / ``resume()``: the port stops answering (connections refused, open ones cut)
  and comes back, as a server that crashes and restarts with its data intact;
  ``fail_at(pattern, n)`` does it the moment a client sends ``pattern`` for the n-th time
  (``b"PUT /"``: the n-th S3 upload never arrives), so a test fails a server mid-run at a
  chosen point instead of racing a timer.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from tests.support.milvus_server import free_port


def make_ca(folder: Path, host: str = "127.0.0.1", *, name: str = "PageLens test") -> dict:
    """A private CA and a server certificate for ``host`` (IP SAN), written as PEM files.

    Returns ``{"ca": path, "cert": path, "key": path}``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context offering ALPN ``h2`` (gRPC refuses a server without it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class H2Tap:
    """Decodes one client's HTTP/2 stream and records each request's headers."""

    def __init__(self) -> None:
        import h2.config
        import h2.connection

        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.requests: list[dict[str, str]] = []
        self.broken: str | None = None

    def feed(self, data: bytes) -> None:
        import h2.events

        if self.broken:
            return
        try:
            events = self.conn.receive_data(data)
        except Exception as exc:  # a frame the mirror cannot follow: keep what it decoded
            self.broken = repr(exc)
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests.append({str(k): str(v) for k, v in event.headers})
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.conn.data_to_send()  # the mirror never answers; drop what it would send


class TcpProxy:
    """``127.0.0.1:port`` -> ``upstream``, optionally terminating TLS and tapping HTTP/2."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        tls: ssl.SSLContext | None = None,
        tap_h2: bool = False,
        port: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.tls = tls
        self.tap_h2 = tap_h2
        self.port = port or free_port()
        self.taps: list[H2Tap] = []
        self.handshake_errors: list[str] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._trigger: tuple[bytes, int] | None = None
        self.seen = 0

    def fail_at(self, pattern: bytes, n: int) -> None:
        """Fail (as :meth:`fail`) instead of forwarding the n-th ``pattern`` clients send."""
        with self._lock:
            self._trigger, self.seen = (pattern, int(n)), 0

    def disarm(self) -> None:
        """Forget a :meth:`fail_at` that has not fired."""
        with self._lock:
            self._trigger = None

    def _forward(self, data: bytes) -> bool:
        """Whether to pass on this client data (False once the trigger fires)."""
        with self._lock:
            if self._trigger is None:
                return True
            pattern, n = self._trigger
            self.seen += data.count(pattern)
            if self.seen < n:
                return True
            self._trigger = None
        self.fail()
        return False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, str]]:
        """Every HTTP/2 request's headers seen so far (with ``tap_h2``)."""
        with self._lock:
            return [r for tap in self.taps for r in tap.requests]

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by fail()/stop()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.tls is not None:
                client.settimeout(10)
                client = self.tls.wrap_socket(client, server_side=True)
                client.settimeout(None)
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            with self._lock:
                self.handshake_errors.append(repr(exc))
            client.close()
            return
        tap = H2Tap() if self.tap_h2 else None
        with self._lock:
            self._conns += [client, upstream]
            if tap is not None:
                self.taps.append(tap)

        def feed(data: bytes) -> bool:
            if tap is not None:
                with self._lock:
                    tap.feed(data)
            return self._forward(data)

        threading.Thread(target=_pump, args=(upstream, client, None), daemon=True).start()
        _pump(client, upstream, feed)

    def _close_conns(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def fail(self) -> None:
        """Stop answering: new connections are refused and open ones are cut."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the thread blocked in accept() (close alone would not, on Linux)
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(5)
        self._close_conns()

    def resume(self) -> TcpProxy:
        """Answer again on the same port."""
        return self.start()

    def stop(self) -> None:
        self.fail()


def _pump(src: socket.socket, dst: socket.socket, check: Callable[[bytes], bool] | None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if check is not None and not check(data):
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()
