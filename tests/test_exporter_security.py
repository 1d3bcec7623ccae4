"""The exporter against real clients on loopback: TLS, basic auth, 404s, hostile HTTP.

Every test starts a real exporter on a free loopback port (in this process, so
that its counters can be compared with what the clients saw) and talks to it
over real sockets; the last one runs a real worker with a web-config file.
Certificates are made by the ``openssl`` command line, passwords hashed by bcrypt.
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from csuite_async_obs import ConfigError, wait_for_task
from csuite_async_obs.http.server import Exporter, start_exporter
from csuite_async_obs.http.webconfig import load_web_config
from csuite_async_obs.testing import Samples

from . import worker_tasks as t
from .support import wait_for

USER, PASSWORD = "prometheus", "correct horse battery staple"
SCRAPED_VALUE = 42.0


# ----------------------------------------------------------------------------- fixtures


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _self_signed(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={cn}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             cwd=folder)  # fmt: skip
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    cert, key = _self_signed(folder, "server", "127.0.0.1")
    client_cert, client_key = _self_signed(folder, "client", "scraper")
    return {"dir": folder, "cert": cert, "key": key, "client_cert": client_cert,
            "client_key": client_key}  # fmt: skip


@pytest.fixture(scope="module")
def password_hash() -> str:
    # Cost 10, as `htpasswd -B` makes by default: slow enough that caching matters.
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()


def _write_config(folder: Path, text: str) -> Path:
    path = folder / f"web-{time.monotonic_ns()}.yml"
    path.write_text(text)
    return path


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("scraped_things", "Things.", registry=registry)
    counter.inc(SCRAPED_VALUE)
    return registry


@pytest.fixture()
def exporters() -> Iterator[Any]:
    started: list[Exporter] = []

    def start(registry: CollectorRegistry | None = None, **kwargs: Any) -> Exporter:
        exporter = start_exporter(registry or _registry(), port=0, addr="127.0.0.1", **kwargs)
        assert exporter is not None
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


def _value(text: str) -> float | None:
    return Samples(text).value("scraped_things_total")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _raw(port: int, payload: bytes, timeout: float = 15.0, shut: bool = False) -> bytes:
    """Send ``payload`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            chunks.append(b"<reset>")
        return b"".join(chunks)


def _status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def _plain_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


# ----------------------------------------------------------------------------- TLS and auth


def test_tls_and_basic_auth(exporters: Any, pki: dict[str, Path], password_hash: str) -> None:
    # Relative paths: read from the config file's folder.
    config = _write_config(pki["dir"], f"""
tls_server_config:
  cert_file: {pki["cert"].name}
  key_file: {pki["key"].name}
basic_auth_users:
  {USER}: {password_hash}
""")  # fmt: skip
    security = load_web_config(config)
    assert security.tls and security.basic_auth
    exporter = exporters(ssl_context=security.ssl_context, authenticate=security.authenticate)
    url = f"https://127.0.0.1:{exporter.port}"
    trust = ssl.create_default_context(cafile=str(pki["cert"]))

    with httpx.Client(verify=trust, timeout=10) as client:
        ok = client.get(url + "/metrics", auth=(USER, PASSWORD))
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/plain; version=")
        assert _value(ok.text) == SCRAPED_VALUE
        assert client.get(url + "/healthz", auth=(USER, PASSWORD)).json() == {"status": "ok"}

        refused = {
            "wrong password": client.get(url + "/metrics", auth=(USER, "wrong")),
            "wrong user": client.get(url + "/metrics", auth=("root", PASSWORD)),
            "missing": client.get(url + "/metrics"),
            "healthz missing": client.get(url + "/healthz"),
            "not basic": client.get(url + "/metrics", headers={"Authorization": "Bearer x"}),
            "garbage": client.get(url + "/metrics", headers={"Authorization": "Basic %%%"}),
            "empty password": client.get(url + "/metrics", auth=(USER, "")),
            "too long": client.get(url + "/metrics", auth=(USER, "x" * 100)),
        }
        for what, response in refused.items():
            assert response.status_code == 401, what
            assert response.headers["www-authenticate"] == 'Basic realm="csuite-async-obs"', what
            assert response.text == "401 Unauthorized\n", what
        # Unknown paths are 404 before any password check: nothing to protect there.
        assert client.get(url + "/").status_code == 404

    # The cache: a header that passed once is known without bcrypt; wrong ones never are.
    auth = security.authenticate
    assert auth is not None
    assert auth.cached(_basic(USER, PASSWORD)) is True
    assert auth.cached(_basic(USER, "wrong")) is None
    assert auth.cached(None) is False
    assert auth.cached("Bearer x") is False


def test_plain_http_to_tls_port_is_refused(exporters: Any, pki: dict[str, Path]) -> None:
    config = _write_config(pki["dir"], f"""
tls_server_config:
  cert_file: {pki["cert"]}
  key_file: {pki["key"]}
""")  # fmt: skip
    security = load_web_config(config)
    exporter = exporters(ssl_context=security.ssl_context)
    port = exporter.port

    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    # Byte level: no HTTP answer at all, the handshake fails and the socket is closed.
    raw = _raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not raw.startswith(b"HTTP/")
    # Hundreds more: plain requests, garbage, a truncated TLS record.
    junk = [b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)), b"\x16\x03\x01\x00\x05hello"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _raw(port, junk[i % 3]), range(300)))
    assert [a for a in answers if a.startswith(b"HTTP/")] == []
    wait_for(lambda: exporter.stats().get("tls_failed") == 302, 10,
             message="302 failed handshakes")  # fmt: skip

    # ... and the server is still there for TLS clients.
    trust = ssl.create_default_context(cafile=str(pki["cert"]))
    response = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=trust, timeout=10)
    assert response.status_code == 200 and _value(response.text) == SCRAPED_VALUE


def test_client_certificates(exporters: Any, pki: dict[str, Path]) -> None:
    config = _write_config(pki["dir"], """
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: client.crt
  min_version: TLS13
""")  # fmt: skip
    security = load_web_config(config)
    exporter = exporters(ssl_context=security.ssl_context)
    url = f"https://127.0.0.1:{exporter.port}/metrics"
    trust = ssl.create_default_context(cafile=str(pki["cert"]))
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=trust, timeout=10)
    trust.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    response = httpx.get(url, verify=trust, timeout=10)
    assert response.status_code == 200 and _value(response.text) == SCRAPED_VALUE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_config: [", "a YAML web-config file ("),
        ("- a\n- b\n", "the top level to be a mapping"),
        ("tls_config: {}\n", "not supported: tls_config"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
         "tls_server_config.cert_file: the path of a PEM certificate"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
         "a PEM certificate and its unencrypted PEM private key ("),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
         "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "not supported: cipher_suites"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
         "  min_version: TLS14\n", "min_version: one of TLS10, TLS11, TLS12, TLS13"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
         "  client_auth_type: RequestClientCert\n", "are not supported"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
         "  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file with"),
        ("basic_auth_users:\n  alice: hunter2\n", "the value for 'alice' is not a bcrypt hash"),
        ("basic_auth_users:\n  'a:b': $2b$10$" + "a" * 53 + "\n", "bad user name 'a:b'"),
    ],
)  # fmt: skip
def test_web_config_errors_name_the_variable(pki: dict[str, Path], text: str,
                                             expected: str) -> None:  # fmt: skip
    config = _write_config(pki["dir"], text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(config)
    message = str(caught.value)
    assert message.startswith(f"CSUITE_WEB_CONFIG={str(config)!r} is not valid: expected ")
    assert expected in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_web_config_missing_file_and_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as caught:
        load_web_config(missing, variable="--metrics-web-config")
    assert str(caught.value) == (f"--metrics-web-config={str(missing)!r} is not valid: "
                                 "expected a readable web-config file (No such file or directory)")  # fmt: skip
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    security = load_web_config(empty)
    assert security.ssl_context is None and security.authenticate is None
    assert load_web_config("") == load_web_config(None)


def test_bind_address_is_honoured(exporters: Any) -> None:
    exporter = exporters()
    assert exporter.address == "127.0.0.1"
    # 127.0.0.2 is another loopback address of this host: nothing listens there.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", exporter.port), timeout=5).close()


# ----------------------------------------------------------------------------- paths


def test_only_metrics_and_healthz(exporters: Any) -> None:
    errors: list[BaseException] = []
    exporter = exporters(on_error=errors.append)
    base = f"http://127.0.0.1:{exporter.port}"
    for path in ["/", "/index.html", "/metrics/", "/metricsx", "/Metrics", "/healthz/x",
                 "//metrics", "/%6Detrics", "/../metrics", "/debug/pprof/", "/static/",
                 "/.env", "/favicon.ico"]:  # fmt: skip
        status, body = _plain_get(base + path)
        assert (status, body) == (404, b"404 Not Found\n"), path
    for payload in [b"OPTIONS * HTTP/1.1\r\n\r\n",
                    b"GET http://127.0.0.1/metrics HTTP/1.1\r\n\r\n"]:  # fmt: skip
        assert _status(_raw(exporter.port, payload)) == 404
    response = _raw(exporter.port, b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert _status(response) == 405 and b"\r\nAllow: GET, HEAD\r\n" in response
    assert response.endswith(b"\r\n\r\n405 Method Not Allowed\n")
    head = _raw(exporter.port, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert _status(head) == 200 and head.endswith(b"\r\n\r\n")
    assert _plain_get(base + "/metrics?debug=1")[0] == 200
    assert errors == []


def test_renderer_replaces_the_registry(exporters: Any) -> None:
    seen: list[str] = []

    def render(accept: str) -> tuple[bytes, str]:
        seen.append(accept)
        return b"rendered_total 7.0\n", "text/plain; version=0.0.4; charset=utf-8"

    exporter = exporters(renderer=render)
    request = urllib.request.Request(f"http://127.0.0.1:{exporter.port}/metrics",
                                     headers={"Accept": "text/plain"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b"rendered_total 7.0\n"
    assert seen == ["text/plain"]


def _slow_read(sock: socket.socket, pause: float) -> bytes:
    """Read a ``Connection: close`` response after ``pause``, in small pieces."""
    time.sleep(pause)  # the server meanwhile fills both socket buffers and must wait
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_body_in_parts_reaches_a_slow_reader_whole(
    exporters: Any, pki: dict[str, Path], tls: bool
) -> None:
    # More parts than one sendmsg call may take (IOV_MAX, 1024) and more bytes than the largest
    # socket buffers hold (tcp_wmem's 4 MiB and the reader's 4 KiB): the server has
    # to stop and resume in the middle of a part, many times.
    parts = [(f"part_{i}_total {i}\n" * (60 + i % 400)).encode() for i in range(1500)]
    joined = b"".join(parts)
    assert len(joined) > 6 * 2**20
    renders = 0

    def render(accept: str) -> tuple[list[bytes], str]:
        nonlocal renders
        renders += 1
        return list(parts), "text/plain; version=0.0.4; charset=utf-8"

    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki["cert"], pki["key"])
    exporter = exporters(renderer=render, ssl_context=context, timeout=30)
    trust = ssl.create_default_context(cafile=str(pki["cert"]))

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", exporter.port))
        return trust.wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock

    for encoding in ("identity", "gzip"):
        with connect() as sock:
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {encoding}"
                         "\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
            response = _slow_read(sock, 0.5)
        head, _, body = response.partition(b"\r\n\r\n")
        assert _status(response) == 200
        assert f"Content-Length: {len(body)}".encode() in head
        if encoding == "gzip":
            assert b"Content-Encoding: gzip" in head
            body = gzip.decompress(body)
        assert body == joined, encoding

    # Keep-alive after a response sent in parts: the next request is read and answered.
    with connect() as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # fmt: skip
        both = _slow_read(sock, 0.5)
    _, _, rest = both.partition(b"\r\n\r\n")
    assert _status(both) == 200 and rest[: len(joined)] == joined
    assert rest[len(joined) :].startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b'\r\n\r\n{"status": "ok"}\n')
    assert renders == 3
    assert exporter.stats()["status_200"] == 4


def test_failing_collector_gives_bare_500(exporters: Any) -> None:
    class Broken:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            raise RuntimeError("secret internal detail")

    registry = _registry()
    registry.register(Broken())
    errors: list[BaseException] = []
    exporter = exporters(registry, on_error=errors.append)
    status, body = _plain_get(f"http://127.0.0.1:{exporter.port}/metrics")
    assert (status, body) == (500, b"500 Internal Server Error\n")
    assert [str(e) for e in errors] == ["secret internal detail"]
    assert _plain_get(f"http://127.0.0.1:{exporter.port}/healthz")[0] == 200


def test_stuck_collector_blocks_neither_healthz_nor_the_server(exporters: Any) -> None:
    release = threading.Event()

    class Stuck:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            release.wait(60)
            yield GaugeMetricFamily("stuck", "Stuck.", value=1)

    registry = _registry()
    registry.register(Stuck())
    exporter = exporters(registry, timeout=2.0, render_threads=2)
    base = f"http://127.0.0.1:{exporter.port}"
    try:
        # Both render threads stuck, and more scrapes queued behind them.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stuck = [pool.submit(_raw, exporter.port, b"GET /metrics HTTP/1.1\r\n\r\n")
                     for _ in range(4)]  # fmt: skip
            started = time.monotonic()
            assert _plain_get(base + "/healthz", timeout=5) == (200, b'{"status": "ok"}\n')
            assert time.monotonic() - started < 2.0
            # The stuck scrapes are closed at the timeout, without an answer.
            assert [f.result(timeout=30) for f in stuck] == [b""] * 4
        assert exporter.stats()["render_timed_out"] == 4
    finally:
        release.set()
    # Once the collector comes back, scrapes work again.
    wait_for(lambda: _plain_get(base + "/metrics")[0] == 200, 30, message="scrape after release")


# ----------------------------------------------------------------------------- hostile HTTP

_LONG = b"a" * 100_000
# (kind, payload, status the client must get; None: closed without an answer)
FLOOD: list[tuple[str, bytes, int | None]] = [
    ("garbage line", b"GARBAGE\r\n\r\n", 400),
    ("binary", bytes(range(14, 256)) * 3 + b"\r\n\r\n", 400),
    ("http/0.9", b"GET /metrics\r\n\r\n", 400),
    ("http/2.0", b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    ("lowercase method", b"get /metrics HTTP/1.1\r\n\r\n", 400),
    ("header without colon", b"GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    ("folded header", b"GET /metrics HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400),
    ("nul in header", b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("negative length", b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    ("two lengths", b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     400),
    ("too many headers", b"GET /metrics HTTP/1.1\r\n"
     + b"".join(b"H%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
    ("huge header", b"GET /metrics HTTP/1.1\r\nX: " + _LONG, 431),
    ("huge request line", b"GET /" + _LONG + b" HTTP/1.1\r\n\r\n", 431),
    ("long target", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400),
    ("utf-8 path", "GET /métrics HTTP/1.1\r\nConnection: close\r\n\r\n".encode(), 404),
    ("teapot method", b"BREW /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", 405),
    ("body", b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
    ("half then close", b"GET /metr", None),
]  # fmt: skip


def test_malformed_request_flood(exporters: Any) -> None:
    errors: list[BaseException] = []
    exporter = exporters(on_error=errors.append)
    rounds = 170  # 18 kinds x 170 = 3,060 requests, loopback only
    jobs = [(kind, payload, expected) for _ in range(rounds) for kind, payload, expected in FLOOD]

    def one(job: tuple[str, bytes, int | None]) -> tuple[str, int | None, int | None]:
        kind, payload, expected = job
        response = _raw(exporter.port, payload, shut=expected is None)
        assert b"Traceback" not in response and b"<html" not in response.lower()
        return kind, expected, _status(response)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs))
    elapsed = time.monotonic() - started
    wrong = [(kind, expected, got) for kind, expected, got in results if expected != got]
    assert wrong == []
    assert len(results) == len(FLOOD) * rounds == 3060

    wait_for(lambda: exporter.stats()["open"] == 0, 30, message="every connection closed")
    stats = exporter.stats()
    expected_status: dict[int, int] = {}
    for _, _, status in FLOOD:
        if status is not None:
            expected_status[status] = expected_status.get(status, 0) + rounds
    assert {k: v for k, v in stats.items() if k.startswith("status_")} == {
        f"status_{code}": count for code, count in expected_status.items()
    }
    assert stats["connections"] == len(jobs)
    assert stats["requests"] == sum(expected_status.values())
    assert errors == []
    # Afterwards a normal scrape succeeds.
    status, body = _plain_get(f"http://127.0.0.1:{exporter.port}/metrics")
    assert status == 200 and _value(body.decode()) == SCRAPED_VALUE
    print(f"flood: {len(jobs)} malformed requests in {elapsed:.1f}s, statuses {expected_status}")


def _wait_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """Wait until the server closes each socket (EOF or reset); when each closed."""
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                assert data == b"", f"slow client got an answer: {data[:80]!r}"
                closed[ready] = time.monotonic()
                selector.unregister(ready)
    return closed


def test_slow_clients_do_not_block_scrapes(exporters: Any) -> None:
    timeout = 3.0
    exporter = exporters(timeout=timeout, max_connections=64)
    port = exporter.port
    n_half, n_trickle, n_scrapes = 150, 5, 20
    half: list[socket.socket] = []
    trickle: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(n_half):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /metr")  # half a request line, then nothing
            half.append(sock)
        trickle_start = time.monotonic()
        for _ in range(n_trickle):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            trickle.append(sock)
        sent = dict.fromkeys(trickle, 0)

        def drip() -> None:
            # One byte of a never-ending header every 0.2 s: each read arrives in
            # time, only the deadline on the whole request head stops it.
            payload = b"GET /metrics HTTP/1.1\r\nX-" + b"a" * 10_000
            while not stop.is_set():
                for sock in trickle:
                    with_errors = sent[sock] >= len(payload)
                    if with_errors:
                        continue
                    try:
                        sock.send(payload[sent[sock] : sent[sock] + 1])
                        sent[sock] += 1
                    except OSError:
                        sent[sock] = len(payload)
                stop.wait(0.2)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()

        latencies = []
        for _ in range(n_scrapes):
            began = time.monotonic()
            status, body = _plain_get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            latencies.append(time.monotonic() - began)
            assert status == 200 and _value(body.decode()) == SCRAPED_VALUE
        # Bound: generous for a loaded 2-core machine, far below the 3 s the slow
        # clients are allowed to hang (and the 10 s default).
        assert max(latencies) < 2.0, latencies

        closed = _wait_closed(half + trickle, time.monotonic() + timeout + 15)
        assert len(closed) == n_half + n_trickle
        for sock in trickle:
            # Trickling never resets the clock: closed at the deadline of the
            # request head, give or take the loop's and this machine's delays.
            assert closed[sock] - trickle_start < timeout + 3.0
            assert sent[sock] >= 5
        stats = exporter.stats()
        assert stats["evicted"] + stats["timed_out"] == n_half + n_trickle
        assert stats["status_200"] == n_scrapes
        print(f"slow clients: scrape latency max {max(latencies) * 1000:.0f} ms; "
              f"evicted {stats['evicted']}, timed out {stats['timed_out']}")  # fmt: skip
    finally:
        stop.set()
        for sock in half + trickle:
            sock.close()


def test_many_concurrent_connections(exporters: Any) -> None:
    exporter = exporters()
    port = exporter.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(300)]
    try:

        def scrape(_: int) -> tuple[int, float | None]:
            status, body = _plain_get(f"http://127.0.0.1:{port}/metrics", timeout=20)
            return status, _value(body.decode()) if status == 200 else None

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(scrape, range(400)))
        assert results == [(200, SCRAPED_VALUE)] * 400
        stats = exporter.stats()
        # 300 idle + 400 scrapes against a bound of 128: idle ones made room.
        assert stats["connections"] == 700
        assert stats["evicted"] >= 300 - 128
        assert stats.get("refused", 0) == 0
    finally:
        for sock in idle:
            sock.close()


def test_keep_alive_and_pipelining(exporters: Any) -> None:
    exporter = exporters()
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            response = client.get(f"http://127.0.0.1:{exporter.port}/metrics")
            assert response.status_code == 200 and _value(response.text) == SCRAPED_VALUE
    assert exporter.stats()["connections"] == 1
    # 500 requests pipelined on one connection: answered in order, no recursion limit.
    payload = (
        b"GET /nope HTTP/1.1\r\n\r\n" * 499 + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    answers = _raw(exporter.port, payload)
    assert answers.count(b"HTTP/1.1 404 Not Found\r\n") == 499
    assert answers.endswith(b'\r\n\r\n{"status": "ok"}\n')


# ----------------------------------------------------------------------------- real worker


def test_worker_serves_tls_and_basic_auth_from_web_config(
    workers: Any, pki: dict[str, Path], password_hash: str, tmp_path: Path
) -> None:
    """Needs Instrumentation.worker_started to load CSUITE_WEB_CONFIG."""
    config = tmp_path / "web.yml"
    config.write_text(f"""
tls_server_config:
  cert_file: {pki["cert"]}
  key_file: {pki["key"]}
basic_auth_users:
  {USER}: {password_hash}
""")  # fmt: skip
    worker = workers(pool="solo", env={"CSUITE_WEB_CONFIG": str(config)}, wait=False)
    url = f"https://127.0.0.1:{worker.port}"
    trust = ssl.create_default_context(cafile=str(pki["cert"]))
    with httpx.Client(verify=trust, timeout=5) as client:

        def healthy() -> bool:
            assert worker.process is not None and worker.process.poll() is None, worker.log()
            return client.get(url + "/healthz", auth=(USER, PASSWORD)).status_code == 200

        wait_for(healthy, 60, message="worker /healthz over TLS")
        ids = [t.ok.delay(i).id for i in range(3)]
        for task_id in ids:
            status = wait_for_task(task_id, timeout=60)
            assert status is not None and status["status"] == "SUCCESS", status
        response = client.get(url + "/metrics", auth=(USER, PASSWORD))
        assert response.status_code == 200
        samples = Samples(response.text)
        assert samples.value("celery_task_succeeded_total", name="tests.ok",
                             queue_name="celery") == 3  # fmt: skip
        assert client.get(url + "/metrics", auth=(USER, "nope")).status_code == 401
        assert client.get(url + "/metrics").status_code == 401
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5)
    assert os.path.exists(config)
