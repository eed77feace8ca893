"""desktop_worker.netguard: private-network refusal, DNS pinning, redirects, caps, rate limits.

Every test talks only to servers it starts on 127.0.0.1, and names resolve through a static
map (no DNS query ever leaves the machine). The helpers at the top (``serve_http``,
``make_cert``, ``tcp_listener``) are shared with test_handlers.py and test_runner.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from desktop_worker.netguard import (
    PRIVATE_HINT,
    NameNotFound,
    NetError,
    NetPolicy,
    RateLimited,
    RateLimiter,
    Resolver,
    TargetRefused,
    check_redirect,
    classify_ip,
    http_request,
    static_resolver,
    tcp_connect,
)

# ------------------------------------------------------------------ shared helpers


@dataclass
class LocalHTTP:
    """A test web server on 127.0.0.1 and the requests it saw."""

    port: int
    scheme: str = "http"
    requests: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.record.requests.append(
            {"method": self.command, "path": self.path, "host": self.headers.get("Host", "")}
        )
        path = parts.path
        if path == "/":
            self._send(200, b"hello from couchfarm tests", head=head)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status page", head=head)
        elif path == "/json":
            doc = {"a": {"b": [1, {"c": "deep"}]}, "t~x": {"s/y": 7}}
            self._send(200, json.dumps(doc).encode(), "application/json", head=head)
        elif path == "/headers":
            self._send(200, json.dumps(dict(self.headers)).encode(), "application/json")
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, b"arrived", head=head)
            else:
                self._send(302, headers={"Location": f"/redirect/{left - 1}"}, head=head)
        elif path == "/to":
            self._send(int(query.get("code", "302")), headers={"Location": query["url"]})
        elif path == "/big":
            self._send(200, b"x" * int(query["n"]), head=head)
        elif path == "/stream":
            # No Content-Length: the size is only known by reading, so the cap must stream.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            remaining = int(query["n"])
            with contextlib.suppress(OSError):
                while remaining > 0:
                    chunk = min(remaining, 16384)
                    self.wfile.write(b"y" * chunk)
                    remaining -= chunk
            self.close_connection = True
        elif path == "/slow":
            time.sleep(float(query.get("s", "1")))
            self._send(200, b"slow", head=head)
        else:
            self._send(404, b"not found", head=head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    record: LocalHTTP

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early (timeouts, size caps) are part of the tests


@contextlib.contextmanager
def serve_http(tls: ssl.SSLContext | None = None) -> Iterator[LocalHTTP]:
    """Start the test web server on 127.0.0.1 (https when ``tls`` is given)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.record = LocalHTTP(port=server.server_address[1], scheme="https" if tls else "http")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.record
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def tcp_listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts and closes; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conn.close()
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CERT_NOT_AFTER = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def make_cert(directory: Path, names: tuple[str, ...] = ("public.test",)) -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` and 127.0.0.1, valid until CERT_NOT_AFTER."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def no_dns(hosts: dict[str, list[str]] | None = None) -> Resolver:
    """A resolver that answers only from ``hosts``; nothing ever reaches real DNS."""
    return static_resolver(hosts or {}, fallback=None)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def web() -> Iterator[LocalHTTP]:
    with serve_http() as server:
        yield server


def open_policy(**kwargs: object) -> NetPolicy:
    """Private networks allowed, no DNS, no rate limit: for plain HTTP behaviour."""
    kwargs.setdefault("resolver", no_dns())
    return NetPolicy(allow_private_network=True, **kwargs)  # type: ignore[arg-type]


def public_loopback_policy(
    hosts: dict[str, list[str]] | None = None, **kwargs: object
) -> NetPolicy:
    """Private networks refused, except 127.0.0.1 itself, which stands in for a public host."""
    return NetPolicy(
        resolver=no_dns(hosts),
        allowed_networks=("127.0.0.1/32",),
        **kwargs,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ classification

NOT_PUBLIC = {
    "127.0.0.1": "a loopback address",
    "127.8.9.10": "a loopback address",
    "10.0.0.1": "a private address",
    "172.16.5.4": "a private address",
    "192.168.1.1": "a private address",
    "169.254.169.254": "a link-local address",
    "100.64.0.1": "a carrier-grade NAT (100.64.0.0/10) address",
    "100.127.255.254": "a carrier-grade NAT (100.64.0.0/10) address",
    "0.0.0.0": "an unspecified address",
    "0.1.2.3": "a special-purpose (not globally routable) address",
    "224.0.0.1": "a multicast address",
    "240.0.0.1": "a reserved address",
    "255.255.255.255": "a reserved address",
    "192.0.2.10": "a special-purpose (not globally routable) address",
    "198.18.0.1": "a special-purpose (not globally routable) address",
    "::1": "a loopback address",
    "::": "an unspecified address",
    "fe80::1": "a link-local address",
    "fc00::1": "a private (unique local) address",
    "fd12:3456::1": "a private (unique local) address",
    "ff02::1": "a multicast address",
    "fec0::1": "a site-local address",
    "2001:db8::1": "a special-purpose (not globally routable) address",
    "::ffff:127.0.0.1": "an IPv4-mapped IPv6 form of 127.0.0.1, a loopback address",
    "::ffff:10.1.2.3": "an IPv4-mapped IPv6 form of 10.1.2.3, a private address",
    "64:ff9b::a00:1": "a NAT64 IPv6 form of 10.0.0.1, a private address",
    "64:ff9b:1::1": "a local-use NAT64 address",
    "2002:7f00:1::": "a 6to4 IPv6 form of 127.0.0.1, a loopback address",
}


@pytest.mark.parametrize(("ip", "why"), sorted(NOT_PUBLIC.items()))
def test_non_public_addresses_are_named(ip: str, why: str) -> None:
    assert classify_ip(ip) == why


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(ip: str) -> None:
    assert classify_ip(ip) is None
    NetPolicy().check_ip(ip)


def test_refusal_message_names_the_address_and_the_flag() -> None:
    with pytest.raises(TargetRefused) as caught:
        NetPolicy().check_ip("127.0.0.1")
    assert caught.value.reason == (
        "refused: 127.0.0.1 is a loopback address (this worker does not allow private "
        "networks; start it with --allow-private-network to permit)"
    )


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    policy = NetPolicy(resolver=no_dns({"internal.test": ["10.0.0.1"]}))
    with pytest.raises(TargetRefused) as caught:
        policy.resolve_checked("internal.test")
    assert caught.value.reason == (
        f"refused: internal.test resolves to 10.0.0.1, a private address ({PRIVATE_HINT})"
    )


def test_one_bad_address_among_good_ones_refuses_the_name() -> None:
    policy = NetPolicy(resolver=no_dns({"mixed.test": ["93.184.216.34", "192.168.0.7"]}))
    with pytest.raises(TargetRefused, match=re.escape("192.168.0.7, a private address")):
        policy.resolve_checked("MIXED.test.")


def test_allow_private_network_lifts_the_check() -> None:
    policy = NetPolicy(allow_private_network=True, resolver=no_dns({"nas.test": ["10.0.0.5"]}))
    assert policy.resolve_checked("nas.test") == ["10.0.0.5"]
    policy.check_ip("127.0.0.1")
    policy.check_ip("169.254.169.254")


def test_allowed_networks_lift_the_check_for_those_networks_only() -> None:
    policy = NetPolicy(allowed_networks=("192.168.1.0/24",))
    policy.check_ip("192.168.1.20")
    policy.check_ip("::ffff:192.168.1.20")
    with pytest.raises(TargetRefused):
        policy.check_ip("192.168.2.20")


def test_unknown_names_do_not_fall_through_to_dns() -> None:
    with pytest.raises(NameNotFound):
        NetPolicy(resolver=no_dns()).resolve("nowhere.test")


def test_ip_literals_are_not_resolved() -> None:
    def resolver(host: str) -> list[str]:
        raise AssertionError(f"resolver called for {host}")

    policy = NetPolicy(allow_private_network=True, resolver=resolver)
    assert policy.resolve("[::1]") == ["::1"]
    assert policy.resolve("10.0.0.1") == ["10.0.0.1"]


# ------------------------------------------------------------------ HTTP


def test_loopback_url_is_refused_before_any_connection(web: LocalHTTP) -> None:
    before = len(web.requests)
    with pytest.raises(TargetRefused, match=re.escape("127.0.0.1 is a loopback address")):
        http_request(web.url("/"), NetPolicy(resolver=no_dns()))
    assert len(web.requests) == before


def test_loopback_url_succeeds_when_private_networks_are_allowed(web: LocalHTTP) -> None:
    response = http_request(web.url("/"), open_policy())
    assert response.status == 200
    assert response.body == b"hello from couchfarm tests"
    assert response.ip == "127.0.0.1"
    assert response.tls_expires_at is None


def test_connection_goes_to_the_vetted_address_with_the_original_host(web: LocalHTTP) -> None:
    # A rebinding resolver: a vetted address first, a private one on any later lookup.
    calls: list[str] = []

    def rebinding(host: str) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.0.0.1"]

    policy = NetPolicy(resolver=rebinding, allowed_networks=("127.0.0.1/32",))
    response = http_request(web.url("/headers", host="site.test"), policy)
    assert response.status == 200
    assert calls == ["site.test"]  # resolved once, connected to what was checked
    assert json.loads(response.body)["Host"] == f"site.test:{web.port}"


def test_redirect_to_loopback_from_an_allowed_target_is_refused(web: LocalHTTP) -> None:
    hosts = {"internal.test": ["10.0.0.1"]}
    policy = public_loopback_policy(hosts)
    for target, why in [
        (f"http://127.0.0.2:{web.port}/", "127.0.0.2 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://internal.test/", "internal.test resolves to 10.0.0.1, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
    ]:
        with pytest.raises(TargetRefused, match=why) as caught:
            http_request(web.url(f"/to?url={target}"), policy)
        assert "--allow-private-network" in caught.value.reason


def test_check_redirect_resolves_and_checks_each_hop() -> None:
    policy = NetPolicy(resolver=no_dns({"public.test": ["93.184.216.34"]}))
    assert check_redirect("http://public.test/a", "/b?c=1", policy) == "http://public.test/b?c=1"
    with pytest.raises(TargetRefused, match=re.escape("127.0.0.1 is a loopback address")):
        check_redirect("http://public.test/a", "http://127.0.0.1:8080/admin", policy)
    with pytest.raises(TargetRefused, match="not an http"):
        check_redirect("http://public.test/a", "file:///etc/passwd", policy)


def test_redirects_are_followed_up_to_the_cap(web: LocalHTTP) -> None:
    response = http_request(web.url("/redirect/5"), open_policy())
    assert response.status == 200
    assert response.body == b"arrived"
    assert len(response.redirects) == 5
    with pytest.raises(TargetRefused, match="more than 5 redirects"):
        http_request(web.url("/redirect/6"), open_policy())
    with pytest.raises(TargetRefused, match="more than 2 redirects"):
        http_request(web.url("/redirect/3"), open_policy(max_redirects=2))


def test_response_size_cap_declared_and_streamed(web: LocalHTTP) -> None:
    policy = open_policy(max_response_bytes=10_000)
    assert len(http_request(web.url("/big?n=10000"), policy).body) == 10_000
    with pytest.raises(TargetRefused, match="10001 bytes, larger than this worker's cap"):
        http_request(web.url("/big?n=10001"), policy)
    assert len(http_request(web.url("/stream?n=10000"), policy).body) == 10_000
    with pytest.raises(TargetRefused, match="larger than this worker's cap of 10000 bytes"):
        http_request(web.url("/stream?n=500000"), policy)


def test_head_reads_no_body(web: LocalHTTP) -> None:
    response = http_request(web.url("/big?n=5000000"), open_policy(), method="HEAD")
    assert response.status == 200
    assert response.body == b""


def test_slow_server_times_out_as_a_net_error(web: LocalHTTP) -> None:
    started = time.monotonic()
    with pytest.raises(NetError, match=re.escape("did not answer within 0.3 s")):
        http_request(web.url("/slow?s=1.5"), open_policy(), timeout_s=0.3)
    assert time.monotonic() - started < 1.4  # gave up well before the server's 1.5 s


def test_connection_refused_is_a_net_error() -> None:
    with pytest.raises(NetError, match="could not connect"):
        http_request(f"http://127.0.0.1:{closed_port()}/", open_policy())


def test_https_pins_the_address_checks_the_name_and_reports_expiry(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    client = ssl.create_default_context(cafile=str(cert))
    with serve_http(server_tls(cert, key)) as site:
        hosts = {"public.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        policy = public_loopback_policy(hosts, ssl_context=client)
        response = http_request(site.url("/", host="public.test"), policy)
        assert response.status == 200
        assert response.tls_expires_at == "2031-01-02T03:04:05.000Z"
        assert site.requests[-1]["host"] == f"public.test:{site.port}"
        with pytest.raises(NetError, match=re.escape("certificate of other.test is not valid")):
            http_request(site.url("/", host="other.test"), policy)


# ------------------------------------------------------------------ TCP


def test_tcp_connect_refuses_loopback_and_connects_when_allowed() -> None:
    with tcp_listener() as port:
        with pytest.raises(TargetRefused, match="loopback"):
            tcp_connect("127.0.0.1", port, NetPolicy(resolver=no_dns()))
        ip, seconds = tcp_connect("127.0.0.1", port, open_policy(), timeout_s=2)
        assert ip == "127.0.0.1"
        assert 0 <= seconds < 2
    with pytest.raises(NetError, match="could not connect"):
        tcp_connect("127.0.0.1", closed_port(), open_policy(), timeout_s=2)


# ------------------------------------------------------------------ rate limiting


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_allows_a_burst_then_one_per_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=5, clock=clock, sleep=clock.sleep)
    assert [limiter.reserve("a.test") for _ in range(5)] == [0.0] * 5
    assert limiter.reserve("a.test") == pytest.approx(1.0)
    assert limiter.reserve("a.test") == pytest.approx(2.0)
    assert limiter.reserve("b.test") == 0.0  # buckets are per target
    clock.now += 10  # refills, but never beyond the burst
    assert [limiter.reserve("A.TEST.") for _ in range(5)] == [0.0] * 5
    assert limiter.reserve("a.test") == pytest.approx(1.0)


def test_acquire_waits_or_refuses_without_taking_a_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=1, clock=clock, sleep=clock.sleep)
    assert limiter.acquire("h.test") == 0.0
    assert limiter.acquire("h.test") == pytest.approx(0.5)
    assert clock.slept == [pytest.approx(0.5)]
    with pytest.raises(RateLimited, match=r"rate limit for h.test: next request allowed in 0.5"):
        limiter.acquire("h.test", max_wait=0.1)
    clock.now += 0.5
    assert limiter.acquire("h.test", max_wait=0.1) == 0.0  # the refused call took nothing


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.reserve("x.test") == 0.0 for _ in range(100))


def test_http_requests_go_through_the_limiter(web: LocalHTTP) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, sleep=clock.sleep)
    policy = open_policy(rate_limiter=limiter)
    http_request(web.url("/redirect/2"), policy)  # three requests to one host
    assert clock.slept == [pytest.approx(1.0)]
