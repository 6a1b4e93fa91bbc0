"""No input gets a 5xx (issue 8 item 7): hypothesis writes raw HTTP requests (methods, paths,
headers, content types, bodies) at a real `transceiver serve` process; every answer is < 500
and the server keeps answering /healthz."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transceiver.auth import write_key_file

pytestmark = pytest.mark.timeout(300)

EXE = Path(sys.executable).parent / "transceiver"
READY = re.compile(r"transceiver ready http=http://(\S+):(\d+)")
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    d = tmp_path_factory.mktemp("fuzz")
    keys = d / "api-keys"
    key = write_key_file(keys)
    err = (d / "txr.log").open("wb")
    proc = subprocess.Popen(
        [
            str(EXE),
            "serve",
            "--listen=127.0.0.1:0",
            "--udp=127.0.0.1:0",
            f"--api-keys={keys}",
            "--post-rate=0",
            "--body-timeout=1",
            "--log-level=warning",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        m = READY.search(proc.stdout.readline().decode())
        assert m
        yield m.group(1), int(m.group(2)), key
        assert proc.poll() is None, "the transceiver died"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        err.close()


def exchange(host: str, port: int, request: bytes) -> int | None:
    """The status of the answer, None if the server closed without one (a refusal too)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)  # no half-close: aiohttp drops a connection whose client did
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    m = STATUS.match(data)
    return int(m.group(1)) if m else None


token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"])
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/calls",
            "/v1/tokens",
            "/healthz",
            "/readyz",
            "/metrics",
            "/",
            "/v1/calls/x",
            "/v1/calls/x.y",
            "/v1/calls/..",
            "/static/../../etc/passwd",
            "/v1/calls?x=%ff",
            "/%00",
            "//v1/calls",
        ]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(lambda p: "/" + p),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/sdp",
            "application/sdp; charset=rot13",
            "application/sdp; charset=utf-8",
            "application/sdp; charset=",
            "application/sdp;;",
            'application/sdp; charset="utf-8',
            "text/plain",
            "application/json",
            "multipart/form-data; boundary=x",
            "",
            ";",
            "a/b/c",
        ]
    ),
    header_value,
)
SDP = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            SDP.encode(),
            SDP.encode("utf-16"),
            b"\xff\xfe",
            b"{}",
            b'{"ttl": 1e309}',
            b'{"ttl": 5}',
            b"[1]",
            b"\x00" * 100,
        ]
    ),
)
extra_headers = st.lists(st.tuples(token, header_value), max_size=4)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=methods,
    path=paths,
    ctype=st.none() | content_types,
    body=bodies,
    auth=st.sampled_from(["none", "key", "junk", "token-ish"]),
    headers=extra_headers,
    length=st.sampled_from(["right", "none", "wrong", "huge", "chunked"]),
)
def test_no_request_gets_a_5xx(server, method, path, ctype, body, auth, headers, length) -> None:
    host, port, key = server
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz"]
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    cred = {"key": key, "junk": "x" * 20, "token-ish": "et1.e30.AAAA", "none": None}[auth]
    if cred:
        lines.append(f"Authorization: Bearer {cred}")
    lines += [f"{k}: {v}" for k, v in headers]
    payload = body
    if length == "right":
        lines.append(f"Content-Length: {len(body)}")
    elif length == "wrong":
        lines.append(f"Content-Length: {len(body) + 7}")
    elif length == "huge":
        lines.append("Content-Length: 99999999999")
    elif length == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    lines.append("Connection: close")
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
    status = exchange(host, port, head + payload)
    assert status is None or status < 500, (status, head, payload[:80])
    assert exchange(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 200


def test_charset_rot13_gets_415_not_500(server) -> None:
    host, port, key = server
    req = (
        f"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/sdp; charset=rot13\r\nContent-Length: 3\r\n\r\nv=0"
    )
    assert exchange(host, port, req.encode()) == 415
