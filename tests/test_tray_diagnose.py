"""desktop_worker/tray/diagnose.py: Test connection names what is wrong.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import socket
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

pytest_plugins = ["tests.tray_fixtures"]


def test_connection_names_dns_and_unreachable(qapp: Any) -> None:
    from desktop_worker.tray.diagnose import test_connection

    def no_dns(*_a: Any, **_k: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    dns = test_connection(["http://nohub.invalid:5984"], "w1", "pw", resolver=no_dns)
    assert (dns.ok, dns.problem) == (False, "dns")
    assert "DNS: the name 'nohub.invalid' does not resolve" in dns.message

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = test_connection([f"http://127.0.0.1:{port}"], "w1", "pw", timeout=2)
    assert down.problem == "unreachable" and "connection refused" in down.message
    assert test_connection(["ftp://x"], "w1", "pw").problem == "bad_url"
    assert test_connection([], "w1", "pw").problem == "bad_url"


def test_connection_names_tls_problems(qapp: Any, tmp_path: Path) -> None:
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from desktop_worker.tray.diagnose import test_connection

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now().astimezone()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    result = test_connection([f"https://127.0.0.1:{port}"], "w1", "pw", timeout=3)
    thread.join(5)
    server.close()
    assert result.problem == "tls", result
    assert "certificate" in result.message and "not trusted" in result.message
