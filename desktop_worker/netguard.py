"""Volunteer safety for the network kinds.

A volunteer lends a machine that usually sits inside a home or office network. Work that
arrives from the hub must not be able to reach that network: the router's admin page,
a NAS, a printer, ``localhost`` services, a cloud metadata endpoint. The rules:

* **Public addresses only, by default.** A target is refused when its address is
  loopback, private (RFC 1918, IPv6 ULA), link-local, multicast, reserved, unspecified,
  carrier-grade NAT (100.64.0.0/10), site-local, or any other address that is not
  globally routable, including those addresses written as IPv4-mapped, NAT64 or 6to4
  IPv6. ``allow_private_network=True`` (``--allow-private-network``) lifts the check;
  ``allowed_networks`` lifts it for chosen networks only.
* **Checked after DNS, and pinned.** A name is resolved once, every address it resolves
  to is checked, and the connection goes to the checked address: the original name
  travels only in the ``Host`` header and TLS SNI / certificate check. A second lookup
  that answers 127.0.0.1 (DNS rebinding) never happens.
* **Redirects are followed by hand**, at most ``max_redirects`` (5), and each hop is
  resolved and checked again. Only http and https hops are followed.
* **Bounded.** Responses are streamed and abandoned past ``max_response_bytes`` (1 MiB);
  requests to one host go through a token bucket (1 per second, burst 5).
* **Bandwidth.** With ``NetPolicy.bandwidth`` (the owner's bandwidth cap), every byte an
  HTTP connection sends or receives after the TLS handshake (TLS records included) takes
  tokens from a :class:`ByteBucket`, and the socket's receive buffer is kept small so that
  the TCP window, not only the reading, follows the cap.

Refusals raise :class:`TargetRefused` (permanent: retrying cannot help). Network failures
raise :class:`NetError` (transient).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import urljoin, urlsplit

from hub.protocol.timefmt import to_wire
from hub.protocol.version import __version__

Resolver = Callable[[str], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE_HINT = (
    "this worker does not allow private networks; start it with --allow-private-network to permit"
)
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_RFC1918 = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class NetError(Exception):
    """A network failure that may pass: timeout, refused connection, DNS trouble."""


class NameNotFound(NetError):
    """The name does not exist, or has no address of the asked family."""


class RateLimited(NetError):
    """The per-target rate limit would make this request wait too long."""


class TargetRefused(Exception):
    """This worker will not contact the target; retrying cannot help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------ addresses


def classify_ip(ip: str | IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("a loopback address"), or None when it is."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        embedded, form = _embedded_ipv4(addr)
        if embedded is not None:
            inner = classify_ip(embedded)
            return f"{form} form of {embedded}, {inner}" if inner else None
        if addr in _NAT64_LOCAL:
            return "a local-use NAT64 address"
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_multicast:
        return "a multicast address"
    if isinstance(addr, ipaddress.IPv4Address):
        if addr in _CGNAT:
            return "a carrier-grade NAT (100.64.0.0/10) address"
        if any(addr in net for net in _RFC1918):
            return "a private address"
    else:
        if addr in _ULA:
            return "a private (unique local) address"
        if addr.is_site_local:
            return "a site-local address"
    if addr.is_reserved:
        return "a reserved address"
    if addr.is_private or not addr.is_global:
        return "a special-purpose (not globally routable) address"
    return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, "an IPv4-mapped IPv6"
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "a NAT64 IPv6"
    if addr.sixtofour is not None:
        return addr.sixtofour, "a 6to4 IPv6"
    return None, ""


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(host: str) -> str:
    """Lower case, no IPv6 brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".") if _parse_ip(host) is None else host


# ------------------------------------------------------------------ resolving


def default_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to (socket.getaddrinfo), in the system's order."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno in _NOT_FOUND_ERRNOS:
            raise NameNotFound(f"{host} does not resolve: {exc.strerror}") from exc
        raise NetError(f"could not resolve {host}: {exc.strerror or exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_NOT_FOUND_ERRNOS = {
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
}


def static_resolver(
    hosts: Mapping[str, Iterable[str]], fallback: Resolver | None = default_resolver
) -> Resolver:
    """A resolver that answers from ``hosts`` (name -> addresses) before ``fallback``.

    With ``fallback=None`` a name outside the map does not resolve, and no DNS query is
    ever sent: that is what tests use.
    """
    table = {normalize_host(name): [str(ip) for ip in ips] for name, ips in hosts.items()}

    def resolve(host: str) -> list[str]:
        found = table.get(normalize_host(host))
        if found is not None:
            return list(found)
        if fallback is None:
            raise NameNotFound(f"{host} does not resolve (not in the static host map)")
        return fallback(host)

    return resolve


# ------------------------------------------------------------------ rate limiting


class RateLimiter:
    """A token bucket per target: ``rate`` requests a second, bursts of ``burst``.

    ``reserve`` takes a token now and says how long to wait before using it, so callers
    that cannot sleep (the runner's parent process) can hand the wait to someone who can.
    ``rate <= 0`` turns limiting off.
    """

    MAX_KEYS = 10_000

    def __init__(
        self,
        rate: float = 1.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def reserve(self, key: str) -> float:
        """Take a token for ``key``; return the seconds to wait before the request."""
        if self.rate <= 0:
            return 0.0
        key = normalize_host(key)
        with self._lock:
            now = self._clock()
            tokens, updated = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate) - 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_idle(now)
            return 0.0 if tokens >= 0 else -tokens / self.rate

    def give_back(self, key: str) -> None:
        """Return a token taken by ``reserve`` that was not used."""
        if self.rate <= 0:
            return
        key = normalize_host(key)
        with self._lock:
            tokens, updated = self._buckets.get(key, (float(self.burst), self._clock()))
            self._buckets[key] = (min(float(self.burst), tokens + 1.0), updated)

    def acquire(self, key: str, max_wait: float | None = None) -> float:
        """Wait for a token for ``key``; return the seconds waited.

        Raises :class:`RateLimited` (and takes nothing) when the wait would be longer
        than ``max_wait``.
        """
        delay = self.reserve(key)
        if max_wait is not None and delay > max_wait:
            self.give_back(key)
            raise RateLimited(
                f"rate limit for {normalize_host(key)}: next request allowed in {delay:.1f} s "
                f"({self.rate:g}/s, burst {self.burst}); try again later"
            )
        if delay > 0:
            self._sleep(delay)
        return delay

    def _forget_idle(self, now: float) -> None:
        full = [
            key
            for key, (tokens, updated) in self._buckets.items()
            if tokens + (now - updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]


class ByteBucket:
    """A token bucket in bytes: at most ``rate`` bytes a second over any stretch of time.

    It starts empty and holds at most ``burst`` bytes of credit (default: a tenth of a
    second's worth), so a transfer of N bytes takes at least (N - burst) / rate seconds.
    :meth:`take` records bytes already moved and sleeps off any debt; callers move at
    most :attr:`chunk` bytes at a time, so the overshoot stays small. Thread-safe.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a ByteBucket needs a rate above 0 bytes per second")
        self.rate = float(rate)
        self.burst = int(burst) if burst is not None else max(1024, int(self.rate / 10))
        self.chunk = max(512, min(_CHUNK, self.burst))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._updated = clock()

    def take(self, nbytes: int) -> float:
        """Account for ``nbytes`` moved; sleep until the rate allows them. Returns the sleep."""
        if nbytes <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._tokens = tokens - nbytes
            self._updated = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def receive_buffer(self) -> int:
        """A socket receive buffer for this rate: half a second of data, 4 KiB to 256 KiB.
        The kernel's default (autotuned to megabytes) would let a whole response in at
        full speed while the reader is still throttling."""
        return max(4096, min(256 * 1024, int(self.rate / 2)))


class ThrottledSocket:
    """A connected socket (plain or TLS) whose reads and writes go through a ByteBucket.

    Covers what ``http.client`` uses: ``sendall``/``send``, ``recv``/``recv_into`` and
    ``makefile("rb")`` (built like ``socket.makefile``, so the response reads through
    :meth:`recv_into`). Everything else goes to the wrapped socket.
    """

    def __init__(self, sock: socket.socket, bucket: ByteBucket) -> None:
        self._sock = sock
        self._bucket = bucket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        size = min(nbytes or len(view), self._bucket.chunk)
        received = self._sock.recv_into(view[:size], size, flags)
        self._bucket.take(received)
        return received

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(min(bufsize, self._bucket.chunk), flags)
        self._bucket.take(len(data))
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        view = memoryview(data).cast("B")
        sent = self._sock.send(view[: self._bucket.chunk], flags)
        self._bucket.take(sent)
        return sent

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._bucket.chunk):
            piece = view[start : start + self._bucket.chunk]
            self._sock.sendall(piece, flags)
            self._bucket.take(len(piece))

    def makefile(self, mode: str = "r", buffering: int | None = None, **_kw: Any) -> Any:
        if set(mode) - {"r", "b"} or "b" not in mode:
            raise ValueError(f"ThrottledSocket.makefile supports 'rb' only, not {mode!r}")
        # As socket.makefile does: the file holds a reference, so close() waits for it.
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        raw = socket.SocketIO(self, "rb")  # type: ignore[arg-type]
        if buffering == 0:
            return raw
        size = io.DEFAULT_BUFFER_SIZE if buffering in (None, -1) else buffering
        return io.BufferedReader(raw, size)


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class NetPolicy:
    """What network kinds may do on this worker."""

    allow_private_network: bool = False
    resolver: Resolver = default_resolver
    rate_limiter: RateLimiter | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    # Networks (CIDR) the owner allows although they are not public, e.g. ("192.168.1.10/32",).
    allowed_networks: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    user_agent: str = f"couchfarm-worker/{__version__}"
    # The owner's bandwidth cap for this run's HTTP traffic (None: no cap).
    bandwidth: ByteBucket | None = field(default=None, compare=False)

    @cached_property
    def _allowed(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(net, strict=False) for net in self.allowed_networks)

    def tls_context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def limit(self, host: str, deadline: float | None = None) -> None:
        if self.rate_limiter is not None:
            max_wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.rate_limiter.acquire(host, max_wait=max_wait)

    def check_ip(self, ip: str, host: str | None = None) -> None:
        """Raise :class:`TargetRefused` unless this worker may connect to ``ip``."""
        addr = _parse_ip(ip)
        if addr is None:
            raise TargetRefused(f"refused: {ip!r} is not an IP address")
        if self.allow_private_network:
            return
        check = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        if any(addr in net or (check is not None and check in net) for net in self._allowed):
            return
        why = classify_ip(addr)
        if why is None:
            return
        shown = str(addr)
        if host is not None and _parse_ip(normalize_host(host)) is None:
            raise TargetRefused(f"refused: {host} resolves to {shown}, {why} ({PRIVATE_HINT})")
        raise TargetRefused(f"refused: {shown} is {why} ({PRIVATE_HINT})")

    def resolve(self, host: str) -> list[str]:
        """The addresses of ``host`` (an IP literal is its own address). Not checked."""
        host = normalize_host(host)
        if not host:
            raise TargetRefused("refused: the target has no host name")
        if _parse_ip(host) is not None:
            return [host]
        try:
            ips = [str(ip) for ip in self.resolver(host)]
        except NetError:
            raise
        except socket.gaierror as exc:
            if exc.errno in _NOT_FOUND_ERRNOS:
                raise NameNotFound(f"{host} does not resolve: {exc.strerror}") from exc
            raise NetError(f"could not resolve {host}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise NetError(f"could not resolve {host}: {exc}") from exc
        if not ips:
            raise NameNotFound(f"{host} has no addresses")
        return ips

    def resolve_checked(self, host: str) -> list[str]:
        """Resolve ``host`` once and check every address; refuse if any is not allowed.

        Connect only to the addresses returned: they are the ones that were checked.
        """
        ips = self.resolve(host)
        for ip in ips:
            self.check_ip(ip, host)
        return ips

    def check_url(self, url: str) -> tuple[str, str, int, list[str]]:
        """Check one hop: scheme, host, port and addresses. Returns (scheme, host, port, ips)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise TargetRefused(f"refused: {_short(url)} is not an http(s) URL")
        if parts.username is not None or parts.password is not None:
            raise TargetRefused(f"refused: {_short(url)} carries user:password@, not supported")
        host = normalize_host(parts.hostname or "")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise TargetRefused(f"refused: {_short(url)} has an invalid port") from exc
        if not host:
            raise TargetRefused(f"refused: {_short(url)} has no host")
        return scheme, host, port, self.resolve_checked(host)


def check_redirect(current_url: str, location: str, policy: NetPolicy) -> str:
    """The absolute URL a redirect points to, after checking it as a new target."""
    target = urljoin(current_url, location.strip())
    policy.check_url(target)
    return target


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ HTTP


@dataclass
class HttpResult:
    url: str  # the final URL, after redirects
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    ip: str  # the address the final response came from
    redirects: list[str]
    elapsed_s: float
    tls_expires_at: str | None = None  # the certificate's notAfter, https only


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Speaks to ``host`` (Host header) but connects to the vetted ``ip``, never DNS."""

    def __init__(
        self, host: str, port: int, ip: str, timeout: float, bandwidth: ByteBucket | None = None
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_ip = ip
        self.bandwidth = bandwidth

    def _open(self) -> socket.socket:
        family, kind, proto, _name, address = socket.getaddrinfo(
            self.pinned_ip, self.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            if self.bandwidth is not None:  # before connect: it sets the TCP window
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, self.bandwidth.receive_buffer()
                )
            sock.settimeout(self.timeout)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self) -> None:
        sock = self._open()
        self.sock = ThrottledSocket(sock, self.bandwidth) if self.bandwidth is not None else sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """TLS to the vetted ``ip`` with SNI and certificate check for the original host."""

    default_port = 443

    def __init__(
        self,
        host: str,
        port: int,
        ip: str,
        timeout: float,
        context: ssl.SSLContext,
        bandwidth: ByteBucket | None = None,
    ) -> None:
        super().__init__(host, port, ip, timeout, bandwidth)
        self.tls_context = context

    def _open(self) -> socket.socket:
        sock = super()._open()
        try:
            return self.tls_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def http_request(
    url: str,
    policy: NetPolicy,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> HttpResult:
    """One request, redirects followed by hand, every hop checked and pinned."""
    started = time.monotonic()
    deadline = started + timeout_s
    sent_headers = {"User-Agent": policy.user_agent, "Accept": "*/*", **(headers or {})}
    redirects: list[str] = []
    current = url
    first_host: str | None = None
    while True:
        scheme, host, port, ips = policy.check_url(current)
        first_host = first_host or host
        if host != first_host:
            # Credentials meant for the first host do not follow a redirect elsewhere.
            sent_headers = {
                k: v
                for k, v in sent_headers.items()
                if k.lower() not in ("authorization", "cookie", "proxy-authorization")
            }
        policy.limit(host, deadline)
        conn, ip = _connect(scheme, host, port, ips, deadline, policy)
        try:
            parts = urlsplit(current)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            try:
                conn.sock.settimeout(_remaining(deadline, current, timeout_s))
                conn.request(method, target, headers=sent_headers)
                response = conn.getresponse()
            except TimeoutError as exc:
                raise NetError(f"{host} did not answer within {timeout_s:g} s") from exc
            except ssl.SSLError as exc:
                raise NetError(f"TLS with {host} failed: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise NetError(f"request to {host} failed: {exc}") from exc
            location = response.getheader("Location")
            if response.status in REDIRECT_STATUSES and location:
                if len(redirects) >= policy.max_redirects:
                    raise TargetRefused(
                        f"refused: more than {policy.max_redirects} redirects "
                        f"(this worker's cap); the next was to {_short(location)}"
                    )
                next_url = urljoin(current, location.strip())
                redirects.append(next_url)
                if response.status == 303 or (
                    response.status in (301, 302) and method not in ("GET", "HEAD")
                ):
                    method = "GET"
                current = next_url
                continue
            tls_expires_at = _tls_expiry(conn.sock) if scheme == "https" else None
            body = b"" if method == "HEAD" else _read_capped(response, host, policy, deadline)
            return HttpResult(
                url=current,
                status=response.status,
                reason=response.reason or "",
                headers={k.lower(): v for k, v in response.getheaders()},
                body=body,
                ip=ip,
                redirects=redirects,
                elapsed_s=time.monotonic() - started,
                tls_expires_at=tls_expires_at,
            )
        finally:
            conn.close()


def _remaining(deadline: float, what: str, timeout_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise NetError(f"{_short(what)} did not finish within {timeout_s:g} s")
    return left


def _connect(
    scheme: str, host: str, port: int, ips: list[str], deadline: float, policy: NetPolicy
) -> tuple[_PinnedHTTPConnection, str]:
    errors = []
    for ip in ips:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn: _PinnedHTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPSConnection(
                host, port, ip, left, policy.tls_context(), policy.bandwidth
            )
        else:
            conn = _PinnedHTTPConnection(host, port, ip, left, policy.bandwidth)
        try:
            conn.connect()
            return conn, ip
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise NetError(
                f"the TLS certificate of {host} is not valid: {exc.verify_message or exc}"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            errors.append(f"{ip}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
    detail = "; ".join(errors) or "timed out"
    raise NetError(f"could not connect to {host} port {port} ({detail})")


def _read_capped(
    response: http.client.HTTPResponse, host: str, policy: NetPolicy, deadline: float
) -> bytes:
    cap = policy.max_response_bytes
    declared = response.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > cap:
        raise TargetRefused(
            f"refused: the response from {host} is {int(declared)} bytes, larger than "
            f"this worker's cap of {cap} bytes"
        )
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            if time.monotonic() >= deadline:
                raise NetError(f"reading the response from {host} took too long")
            chunk = response.read(min(_CHUNK, cap + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise TargetRefused(
                    f"refused: the response from {host} is larger than this worker's cap "
                    f"of {cap} bytes; the download was stopped"
                )
            chunks.append(chunk)
    except TimeoutError as exc:
        raise NetError(f"reading the response from {host} timed out") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise NetError(f"reading the response from {host} failed: {exc}") from exc
    return b"".join(chunks)


def _tls_expiry(sock: socket.socket | None) -> str | None:
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert()
    not_after = cert.get("notAfter") if cert else None
    if not not_after:
        return None
    return to_wire(datetime.fromtimestamp(ssl.cert_time_to_seconds(str(not_after)), UTC))


# ------------------------------------------------------------------ TCP


def tcp_connect(
    host: str, port: int, policy: NetPolicy, timeout_s: float = 10.0
) -> tuple[str, float]:
    """Connect to a checked address of ``host``; return (address, seconds to connect)."""
    if not 1 <= port <= 65535:
        raise TargetRefused(f"refused: port {port} is out of range")
    deadline = time.monotonic() + timeout_s
    ips = policy.resolve_checked(host)
    policy.limit(host, deadline)
    errors = []
    for ip in ips:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        started = time.monotonic()
        try:
            with socket.create_connection((ip, port), timeout=left):
                return ip, time.monotonic() - started
        except TimeoutError:
            errors.append(f"{ip}: timed out")
        except OSError as exc:
            errors.append(f"{ip}: {exc.strerror or exc}")
    detail = "; ".join(errors) or f"timed out after {timeout_s:g} s"
    raise NetError(f"could not connect to {host} port {port} ({detail})")
