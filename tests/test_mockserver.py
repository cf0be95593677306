"""Sanity checks for the loopback mock server, through real sockets and without Scrapy."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import ssl
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import brotli
import pytest

from tests.mockserver import COMPRESSED_TEXT, MockServer, body_bytes, page_body

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer(hosts=3) as srv:
        yield srv


@pytest.fixture
def srv(server: MockServer) -> MockServer:
    server.reset()
    return server


def fetch(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    context: ssl.SSLContext | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request with exactly the given headers (repeats allowed), no proxy involved."""
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    assert parts.hostname is not None
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=TIMEOUT, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to a loopback port and read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_until_closed(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(65536):
        into += chunk


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def proxy_request(srv: MockServer, target: str, auth: str | None) -> bytes:
    head = f"GET {target} HTTP/1.1\r\nHost: {urlsplit(target).netloc}\r\n"
    if auth is not None:
        head += f"Proxy-Authorization: {auth}\r\n"
    return raw_exchange(srv.proxy_port, (head + "\r\n").encode())


def test_url_helpers(server: MockServer) -> None:
    port = server.http_port
    assert server.url("/echo") == f"http://127.0.0.1:{port}/echo"
    assert server.url("/echo", host=2) == f"http://127.0.0.2:{port}/echo"
    assert server.url("/echo", https=True) == f"https://127.0.0.1:{server.https_port}/echo"
    assert server.fault_url("/x") == f"http://127.0.0.1:{server.fault_port}/x"
    assert server.tls_fail_url() == f"https://127.0.0.1:{server.tls_fail_port}/"
    assert server.proxy_url() == f"http://127.0.0.1:{server.proxy_port}"
    assert server.proxy_url(("u", "p")) == f"http://u:p@127.0.0.1:{server.proxy_port}"
    with pytest.raises(ValueError, match="host index"):
        server.url("/", host=4)


def test_echo_round_trip(srv: MockServer) -> None:
    headers = [("X-Repeat", "one"), ("X-Other", "x"), ("X-Repeat", "two")]
    response, data = fetch(srv.url("/echo/a%20b?q=%20x&q=2"), "POST", b"\x00body", headers)
    assert response.status == 200
    echoed = json.loads(data)
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo/a b"
    assert echoed["url"] == "/echo/a%20b?q=%20x&q=2"
    assert echoed["query_string"] == "q=%20x&q=2"
    assert [h for h in echoed["headers"] if h[0].startswith("X-")] == [list(h) for h in headers]
    assert base64.b64decode(echoed["body_b64"]) == b"\x00body"


def test_stats_per_host_and_max_inflight(srv: MockServer) -> None:
    with ThreadPoolExecutor(max_workers=5) as pool:
        urls = [srv.url("/delay/0.5", host=2)] * 4 + [srv.url("/status/418", host=3)]
        statuses = [response.status for response, _ in pool.map(fetch, urls)]
    assert statuses == [200] * 4 + [418]
    hosts = srv.stats()["hosts"]
    assert set(hosts) == {srv.netloc(2), srv.netloc(3)}  # control endpoints are not counted
    delayed = hosts[srv.netloc(2)]
    assert delayed["count"] == 4
    assert delayed["max_inflight"] == 4
    assert delayed["inflight"] == 0
    assert delayed["paths"] == ["/delay/0.5"] * 4
    assert len(delayed["starts"]) == 4
    assert delayed["starts"] == sorted(delayed["starts"])
    srv.reset()
    assert srv.host_stats(2)["count"] == 0


def test_bodies(srv: MockServer) -> None:
    _, data = fetch(srv.url("/bytes/1000"))
    assert data == body_bytes(1000)
    response, data = fetch(srv.url("/stream/5000?chunk=1000"))
    assert data == body_bytes(5000)
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Length") is None
    _, data = fetch(srv.url("/page/3"))
    assert data == page_body(3)
    decoders = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}
    for encoding, decode in decoders.items():
        response, data = fetch(srv.url(f"/compressed/{encoding}"))
        assert response.getheader("Content-Encoding") == encoding
        assert decode(data) == COMPRESSED_TEXT
    _, data = fetch(srv.url("/gzip-bomb?size=2"))
    assert len(data) < 10_000
    assert gzip.decompress(data) == bytes(2 << 20)
    response, _ = fetch(srv.url("/headers-multi"))
    assert response.headers.get_all("X-Multi") == ["a", "b"]
    assert len(response.headers.get_all("Set-Cookie") or []) == 2


def test_https_with_ca(srv: MockServer) -> None:
    response, data = fetch(srv.url("/json", https=True), context=srv.ssl_context())
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(data)["hello"] == "json"
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(srv.url("/json", https=True), context=ssl.create_default_context())


def test_tls_fail_port(srv: MockServer) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(srv.tls_fail_url(), context=srv.ssl_context())


def test_proxy_forward(srv: MockServer) -> None:
    reply = proxy_request(srv, srv.url("/echo?via=proxy", host=3), basic("user", "pass"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in head
    echoed = json.loads(body)
    assert echoed["url"] == "/echo?via=proxy"
    names = [name.lower() for name, _ in echoed["headers"]]
    assert ["Via", "mockproxy"] in echoed["headers"]
    assert "proxy-authorization" not in names
    entry = {"method": "GET", "target": srv.url("/echo?via=proxy", host=3), "authorized": True}
    assert srv.stats()["proxy"] == [entry]


def test_proxy_connect_tunnel(srv: MockServer) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", srv.proxy_port, timeout=TIMEOUT, context=srv.ssl_context()
    )
    target = f"127.0.0.1:{srv.https_port}"
    conn.set_tunnel("127.0.0.1", srv.https_port, {"Proxy-Authorization": basic("user", "pass")})
    try:
        conn.request("GET", "/html")
        response = conn.getresponse()
        assert response.status == 200
        assert b"hello html" in response.read()
    finally:
        conn.close()
    assert srv.stats()["proxy"] == [{"method": "CONNECT", "target": target, "authorized": True}]


@pytest.mark.parametrize("auth", [None, basic("user", "wrong"), "Bearer token"])
def test_proxy_requires_auth(srv: MockServer, auth: str | None) -> None:
    reply = proxy_request(srv, srv.url("/echo"), auth)
    assert reply.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="mockproxy"' in reply
    assert srv.stats()["proxy"][-1]["authorized"] is False


def test_proxy_refuses_non_loopback(srv: MockServer) -> None:
    # 192.0.2.0/24 is TEST-NET-1; the proxy must refuse before trying to connect.
    reply = proxy_request(srv, "http://192.0.2.1/", basic("user", "pass"))
    assert reply.startswith(b"HTTP/1.1 403 ")


def test_proxy_without_auth() -> None:
    with MockServer(hosts=1, proxy_auth=None) as srv:
        reply = proxy_request(srv, srv.url("/status/201"), None)
        assert reply.startswith(b"HTTP/1.1 201 ")
        assert srv.stats()["proxy"][0]["authorized"] is True
    assert srv.returncode == 0  # SIGTERM ends it cleanly


def test_raw_faults(srv: MockServer) -> None:
    with pytest.raises(ConnectionResetError):
        fetch(srv.fault_url("/reset-before-headers"))
    with pytest.raises(http.client.BadStatusLine):
        fetch(srv.fault_url("/malformed-status"))
    with pytest.raises(http.client.IncompleteRead):
        fetch(srv.fault_url("/short-body"))
    host = f"127.0.0.1:{srv.fault_port}"
    reply = raw_exchange(srv.fault_port, f"GET /not-http HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert not reply.startswith(b"HTTP")
    response, _ = fetch(srv.fault_url("/unknown"))
    assert response.status == 404
    with socket.create_connection(("127.0.0.1", srv.fault_port), timeout=0.3) as sock:
        sock.sendall(f"GET /never-answer HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert srv.stats()["hosts"][host]["paths"] == [
        "/reset-before-headers",
        "/malformed-status",
        "/short-body",
        "/not-http",
        "/unknown",
        "/never-answer",
    ]


def test_app_faults(srv: MockServer) -> None:
    with pytest.raises(http.client.IncompleteRead):
        fetch(srv.url("/truncated"))
    received = bytearray()
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /reset-mid-body HTTP/1.1\r\nHost: {srv.netloc()}\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):
            read_until_closed(sock, received)
    assert b"Content-Length: 100000" in received
    assert len(received.partition(b"\r\n\r\n")[2]) == 1000
    response, _ = fetch(srv.url("/retry-after/503?after=120"))
    assert (response.status, response.getheader("Retry-After")) == (503, "120")
    response, _ = fetch(srv.url("/redirect-loop"))
    assert (response.status, response.getheader("Location")) == (302, "/redirect-loop")
