"""What a failed HTTP call tells about the request: real sockets on loopback,
each failing at a different moment of the exchange."""

import contextlib
import ipaddress
import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from functions.transport import may_have_been_read, retry_after


def _server(behaviour):
    """A one-connection TCP server on loopback that does `behaviour(conn)`; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            behaviour(conn)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/send"


def _read_request(conn):
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    return data


def _reset(conn):
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def _close(conn):
    _read_request(conn)


def _hang(conn):
    _read_request(conn)
    threading.Event().wait(2)


def _half_answer(conn):
    _read_request(conn)
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"sid":')


def _failure(url, **kwargs):
    with pytest.raises(requests.RequestException) as caught:
        requests.post(url, data={"To": "+15550000001"}, timeout=kwargs.get("timeout", 5))
    return caught.value


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/send"


def test_connection_refused_never_reached_the_server():
    assert not may_have_been_read(_failure(_closed_port()))


def test_name_resolution_failure_never_reached_the_server():
    assert not may_have_been_read(_failure("http://no-such-host.invalid/send"))


@pytest.mark.parametrize("behaviour", [_reset, _close, _half_answer], ids=["reset", "closed", "cut-short"])
def test_a_connection_lost_after_the_request_was_written_may_have_been_read(behaviour):
    exc = _failure(_server(behaviour))
    assert may_have_been_read(exc), repr(exc)


def test_a_read_timeout_may_have_been_read():
    exc = _failure(_server(_hang), timeout=(3, 0.3))
    assert isinstance(exc, requests.ReadTimeout)
    assert may_have_been_read(exc)


def test_connect_timeout_never_reached_the_server():
    exc = requests.ConnectTimeout("connect timed out")
    assert not may_have_been_read(exc)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A server TLS context for 127.0.0.1 and the path of its (self-signed) certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, str(folder / "cert.pem")


def _tls_failure(url: str, verify) -> requests.RequestException:
    with pytest.raises(requests.exceptions.SSLError) as caught:
        requests.post(url.replace("http://", "https://"), data={"To": "+15550000001"}, verify=verify, timeout=5)
    return caught.value


def test_a_tls_failure_after_the_request_was_written_may_have_been_read(tls):
    context, cert = tls

    def read_then_break_tls(conn):
        with context.wrap_socket(conn, server_side=True) as secure:
            _read_request(secure)  # the provider has the request
            os.write(secure.fileno(), b"\x15\x03\x03\x00\x02\x02\x14")  # a record outside the session
            threading.Event().wait(1)  # held open: the client reads the record, not the close

    assert may_have_been_read(_tls_failure(_server(read_then_break_tls), verify=cert))


def test_a_failed_tls_handshake_never_reached_the_server(tls):
    context, _ = tls

    def handshake(conn):
        with contextlib.suppress(ssl.SSLError, OSError):  # the client refuses the certificate
            context.wrap_socket(conn, server_side=True).close()

    assert not may_have_been_read(_tls_failure(_server(handshake), verify=True))


def _response(value):
    response = requests.Response()
    if value is not None:
        response.headers["Retry-After"] = value
    return response


@pytest.mark.parametrize("value, expected", [("7", 7.0), ("0", 0.0), ("3600", 30.0), (None, None), ("soon", None)])
def test_retry_after_seconds_is_bounded(value, expected):
    assert retry_after(_response(value), cap=30.0) == expected


def test_retry_after_http_date():
    when = datetime.now(UTC) + timedelta(seconds=20)
    assert 15 <= retry_after(_response(format_datetime(when, usegmt=True)), cap=60.0) <= 20
    assert retry_after(_response(format_datetime(when - timedelta(hours=1), usegmt=True)), cap=60.0) == 0.0
