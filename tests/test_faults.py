"""Issue 13: bad input and remote faults through the real handler (fake model, moto S3 on 127.0.0.1).

Classes: server-side request forgery, slow image servers and cancellation, remote faults reported as
remote faults, full-match patterns, one frame limit, disk full, storage blips during the upload.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import b64, code_of, png_bytes, run

from worker import delivery
from worker import fetch as fetch_mod
from worker import job as worker_job
from worker import storage as storage_mod




def base_input(**extra):
    return {"prompt": "a quiet harbour", "image_base64": b64(png_bytes()), "pose": "w-3", **extra}


def url_input(url, **extra):
    return {"prompt": "a quiet harbour", "image_url": url, "pose": "w-3", **extra}


# ---- a raw-socket image server for faults the stub cannot make ------------------------------------
class RawServer:
    """One behaviour per server: ``handler(conn, request_bytes)`` writes whatever it likes."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.behaviour = behaviour
        self.requests = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            data = b""
            conn.settimeout(5)
            try:
                while b"\r\n\r\n" not in data:
                    part = conn.recv(4096)
                    if not part:
                        return
                    data += part
                self.requests.append(data)
                self.behaviour(conn, data, self)
            except OSError:
                pass

    def close(self):
        self.closed.set()
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def make(behaviour):
        server = RawServer(behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


PNG = png_bytes()


def _ok(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(PNG) + PNG)


# ==== 1. server-side request forgery ===============================================================
@pytest.mark.parametrize("host", [
    "localhost", "127.0.0.1", "127.1", "127.0.0.2", "2130706433", "0x7f000001", "0177.0.0.1",
    "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::]",
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "169.254.169.254", "[fe80::1]",
    "[fd00::1]", "[::ffff:169.254.169.254]", "[64:ff9b::a00:1]", "[2002:7f00:1::]",
    "224.0.0.1", "255.255.255.255", "198.18.0.1",
])
def test_non_public_hosts_are_refused(fake_pipeline, raw_server, host):
    server = raw_server(_ok)
    out = run(url_input(f"http://{host}:{server.port}/latest/meta-data/x.png"))
    assert code_of(out) == "IMAGE_URL_FORBIDDEN", out
    assert "refresh_worker" not in out
    assert "WORLDPLAY_ALLOW_PRIVATE_URLS" in out["error"]
    assert server.requests == []  # nothing was sent anywhere
    assert fake_pipeline.calls == []


def test_https_and_default_ports_are_checked_too(fake_pipeline):
    for url in ("https://127.0.0.1/a.png", "http://localhost/a.png", "https://[::1]/x"):
        assert code_of(run(url_input(url))) == "IMAGE_URL_FORBIDDEN"


def test_private_allowed_by_the_operator(fake_pipeline, raw_server, monkeypatch):
    server = raw_server(_ok)
    monkeypatch.setenv("WORLDPLAY_ALLOW_PRIVATE_URLS", "1")
    out = run(url_input(f"http://localhost:{server.port}/a.png"))
    assert "error" not in out, out
    monkeypatch.setenv("WORLDPLAY_ALLOW_PRIVATE_URLS", "0")
    assert code_of(run(url_input(f"http://localhost:{server.port}/a.png"))) == "IMAGE_URL_FORBIDDEN"


class _PublicName:
    """A fake public host name: resolves to a global address (198.51.100.x is documentation space,
    so a real global one is used); the connection to that address is routed to a local server."""

    def __init__(self, monkeypatch, port, answers=None):
        self.lookups = []
        self.dialed = []
        self.answers = answers or {"images.example.com": [["93.184.216.34"], ["127.0.0.1"]]}
        real_dial, real_resolve = fetch_mod._dial, fetch_mod.resolve

        def resolve(host, port_):
            self.lookups.append(host)
            queue = self.answers.get(host)
            if queue is None:  # IP literals and real names: the real resolver
                return real_resolve(host, port_)
            return queue.pop(0) if len(queue) > 1 else queue[0]

        def dial(address, port_, timeout):
            self.dialed.append(address)
            target = "127.0.0.1" if fetch_mod.forbidden_reason(address) is None else address
            return real_dial(target, port, timeout)

        monkeypatch.setattr(fetch_mod, "resolve", resolve)
        monkeypatch.setattr(fetch_mod, "_dial", dial)


def test_connects_to_the_checked_address_once(fake_pipeline, raw_server, monkeypatch):
    """DNS rebinding: the second answer would be loopback; it must never be asked for."""
    server = raw_server(_ok)
    fake = _PublicName(monkeypatch, server.port)
    out = run(url_input(f"http://images.example.com:{server.port}/a.png"))
    assert "error" not in out, out
    assert fake.lookups == ["images.example.com"]
    assert fake.dialed == ["93.184.216.34"]
    assert f"Host: images.example.com:{server.port}".encode() in server.requests[0]


def test_every_resolved_address_must_be_public(fake_pipeline, raw_server, monkeypatch):
    server = raw_server(_ok)
    fake = _PublicName(monkeypatch, server.port,
                       {"mixed.example.com": [["93.184.216.34", "10.1.2.3"]]})
    out = run(url_input(f"http://mixed.example.com:{server.port}/a.png"))
    assert code_of(out) == "IMAGE_URL_FORBIDDEN"
    assert "resolves to a private address" in out["error"] and "10.1.2.3" not in out["error"]
    assert fake.dialed == []


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:{port}/a.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:10.0.0.1]/", "http://2130706433/", "http://inside.example.com/a.png",
    "file:///etc/passwd", "gopher://127.0.0.1:25/",
])
def test_redirects_are_checked_at_every_hop(fake_pipeline, raw_server, monkeypatch, location):
    target = raw_server(_ok)
    hops = []

    def redirect(conn, data, server):
        hops.append(data)
        loc = location.format(port=target.port).encode()
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + loc + b"\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")

    server = raw_server(redirect)
    _PublicName(monkeypatch, server.port, {
        "images.example.com": [["93.184.216.34"]], "inside.example.com": [["10.9.8.7"]]})
    out = run(url_input(f"http://images.example.com:{server.port}/start.png"))
    assert code_of(out) == "IMAGE_URL_FORBIDDEN", out
    assert "redirect" in out["error"]
    assert len(hops) == 1 and target.requests == []


def test_redirect_to_a_public_host_is_followed_and_bounded(fake_pipeline, raw_server, monkeypatch):
    final = raw_server(_ok)

    def redirect(conn, data, server):
        conn.sendall(b"HTTP/1.1 301 Moved\r\nLocation: http://cdn.example.net:%d/final.png\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n" % final.port)

    first = raw_server(redirect)
    fake = _PublicName(monkeypatch, first.port, {"a.example.com": [["93.184.216.34"]],
                                                  "cdn.example.net": [["151.101.1.1"]]})
    # both public names are routed to 127.0.0.1: the dial hook picks the port by address
    real_dial = socket.create_connection
    ports = {"93.184.216.34": first.port, "151.101.1.1": final.port}
    monkeypatch.setattr(fetch_mod, "_dial", lambda address, port, timeout: (
        fake.dialed.append(address) or real_dial(("127.0.0.1", ports[address]), timeout=timeout)))
    out = run(url_input(f"http://a.example.com:{first.port}/start.png"))
    assert "error" not in out, out
    assert fake.dialed == ["93.184.216.34", "151.101.1.1"]
    assert b"Host: cdn.example.net:" in final.requests[0]

    def loop(conn, data, server):
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /again.png\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")

    looping = raw_server(loop)
    ports["93.184.216.34"] = looping.port
    out = run(url_input(f"http://a.example.com:{looping.port}/start.png"))
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and "redirects" in out["error"]
    assert len(looping.requests) == 6  # the first request + 5 redirects, then it stops


def test_forbidden_reason_unit():
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                    "64:ff9b::808:808", "64:ff9b::8.8.4.4"):  # NAT64 of a public IPv4: judged by it
        assert fetch_mod.forbidden_reason(address) is None, address
    for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:192.168.0.1",
                    "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::192.168.0.1",
                    "64:ff9b:1::808:808", "2002:a00:1::", "fc00::1", "ff02::1",
                    "192.0.2.1", "240.0.0.1", "not-an-ip"):
        assert fetch_mod.forbidden_reason(address) is not None, address


def test_nat64_of_a_public_ipv4_is_fetched(fake_pipeline, raw_server, monkeypatch):
    """An IPv6-only network reaches IPv4 hosts through NAT64 (64:ff9b::/96): such an address is as
    public as the IPv4 address inside it, so it is fetched (and 64:ff9b::a00:1 is refused above)."""
    server = raw_server(_ok)
    fake = _PublicName(monkeypatch, server.port, {})
    out = run(url_input(f"http://[64:ff9b::5db8:d822]:{server.port}/a.png"))  # 93.184.216.34
    assert "error" not in out, out
    assert fake.dialed == ["64:ff9b::5db8:d822"]


def test_percent_encoded_credentials_are_sent_decoded(fake_pipeline, raw_server, monkeypatch):
    """``user:p%40ss@host``: the userinfo of a URL is percent-encoded; Basic auth carries it decoded
    (``p@ss``), and neither form reaches the job's output or error."""
    import base64

    server = raw_server(_ok)
    _PublicName(monkeypatch, server.port, {"images.example.com": [["93.184.216.34"]]})
    out = run(url_input(f"http://me%40corp:p%40ss%3Aw%2Fx@images.example.com:{server.port}/a.png"))
    assert "error" not in out, out
    expected = base64.b64encode(b"me@corp:p@ss:w/x")
    assert b"Authorization: Basic " + expected + b"\r\n" in server.requests[0]
    assert "p%40ss" not in str(out) and "p@ss" not in str(out)


# ==== 2. a slow image server holds the worker =======================================================
def _trickle(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(400):  # 1 byte every 0.05 s: each read succeeds, the download never ends
        if server.closed.is_set():
            return
        conn.sendall(b"x")
        time.sleep(0.05)


def test_total_download_deadline(fake_pipeline, raw_server, monkeypatch, allow_private_urls):
    server = raw_server(_trickle)
    monkeypatch.setenv("WORLDPLAY_IMAGE_URL_TIMEOUT", "0.6")
    t0 = time.monotonic()
    out = run(url_input(f"{server.url}/slow.png"))
    elapsed = time.monotonic() - t0
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED", out
    assert "longer than 0.6 s" in out["error"] and "WORLDPLAY_IMAGE_URL_TIMEOUT" in out["error"]
    assert elapsed < 3.0
    assert fake_pipeline.calls == []


def test_slow_headers_hit_the_deadline_too(fake_pipeline, raw_server, monkeypatch,
                                          allow_private_urls):
    def slow_headers(conn, data, server):
        for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 200:
            if server.closed.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    server = raw_server(slow_headers)
    monkeypatch.setenv("WORLDPLAY_IMAGE_URL_TIMEOUT", "0.5")
    t0 = time.monotonic()
    out = run(url_input(f"{server.url}/slow.png"))
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and time.monotonic() - t0 < 3.0


def test_cancel_during_download(fake_pipeline, raw_server, allow_private_urls):
    server = raw_server(_trickle)
    cancel = threading.Event()
    threading.Timer(0.4, cancel.set).start()
    t0 = time.monotonic()
    out = worker_job.run_job({"id": "c", "input": url_input(f"{server.url}/slow.png")},
                             cancel_event=cancel)
    assert code_of(out) == "CANCELLED" and "downloading image_url" in out["error"]
    assert time.monotonic() - t0 < 2.0


def test_platform_cancel_frees_the_job_thread(fake_pipeline, raw_server, allow_private_urls):
    """The handler's cancellation (RunPod's stop) reaches the download: the single job thread is free
    for the next job at once."""
    server = raw_server(_trickle)

    async def scenario():
        task = asyncio.ensure_future(worker_job.handler(
            {"id": "slow", "input": url_input(f"{server.url}/slow.png")}))
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        out = await worker_job.handler({"id": "next", "input": base_input()})
        return out, time.monotonic() - t0

    out, waited = asyncio.run(scenario())
    assert "error" not in out, out
    assert waited < 3.0


def test_slow_dns_is_bounded_by_the_deadline_and_cancel(fake_pipeline, monkeypatch):
    release = threading.Event()

    def slow_resolve(host, port):
        release.wait(10)  # a resolver that hangs
        return ["93.184.216.34"]

    monkeypatch.setattr(fetch_mod, "resolve", slow_resolve)
    monkeypatch.setenv("WORLDPLAY_IMAGE_URL_TIMEOUT", "0.4")
    t0 = time.monotonic()
    out = run(url_input("http://slow-dns.example.com/a.png"))
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and "longer than 0.4 s" in out["error"]
    assert time.monotonic() - t0 < 2.0
    monkeypatch.setenv("WORLDPLAY_IMAGE_URL_TIMEOUT", "60")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    out = worker_job.run_job({"id": "d", "input": url_input("http://slow-dns.example.com/a.png")},
                             cancel_event=cancel)
    assert code_of(out) == "CANCELLED"
    release.set()


def test_https_handshake_failure_is_a_download_failure(fake_pipeline, allow_private_urls):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def plain_http():  # answers the TLS ClientHello with plain HTTP
        for _ in range(3):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=plain_http, daemon=True).start()
    try:
        out = run(url_input(f"https://localhost:{listener.getsockname()[1]}/a.png"))
    finally:
        listener.close()
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and "TLS" in out["error"], out
    assert "refresh_worker" not in out


def test_cancel_between_retries(fake_pipeline, raw_server, allow_private_urls):
    server = raw_server(lambda conn, data, s: conn.sendall(
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(Exception) as exc:
        fetch_mod.fetch_url(f"{server.url}/a.png", 1000, cancel_event=cancel,
                            retry=fetch_mod.FetchRetry(attempts=10, initial=5.0, maximum=5.0))
    assert getattr(exc.value, "code", None) == "CANCELLED"


# ==== 3. remote faults are remote faults ===========================================================
def _gzip_corrupt(conn, data, server):
    body = b"\x1f\x8b\x08\x00garbage-not-deflate" * 10
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body) + body)


def _gzip_truncated(conn, data, server):
    body = gzip.compress(PNG)[:-30]
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body) + body)


def _deflate_corrupt(conn, data, server):
    body = b"not deflate at all" * 5
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body) + body)


def _closed_mid_body(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + PNG[:100])


def _closed_mid_chunk(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + PNG[:50])


def _bad_chunk_size(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")


def _garbage_status(conn, data, server):
    conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")


def _no_response(conn, data, server):
    pass  # closes at once


def _redirect_bad_url(conn, data, server):
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://[::1/a.png\r\nContent-Length: 0\r\n"
                 b"Connection: close\r\n\r\n")


def _redirect_without_location(conn, data, server):
    conn.sendall(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _not_an_image(conn, data, server):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")


@pytest.mark.parametrize("behaviour, code", [
    (_gzip_corrupt, "IMAGE_DOWNLOAD_FAILED"), (_gzip_truncated, "INVALID_IMAGE"),
    (_deflate_corrupt, "IMAGE_DOWNLOAD_FAILED"), (_closed_mid_body, "IMAGE_DOWNLOAD_FAILED"),
    (_closed_mid_chunk, "IMAGE_DOWNLOAD_FAILED"), (_bad_chunk_size, "IMAGE_DOWNLOAD_FAILED"),
    (_garbage_status, "IMAGE_DOWNLOAD_FAILED"), (_no_response, "IMAGE_DOWNLOAD_FAILED"),
    (_redirect_bad_url, "IMAGE_DOWNLOAD_FAILED"),
    (_redirect_without_location, "IMAGE_DOWNLOAD_FAILED"), (_not_an_image, "INVALID_IMAGE"),
])
def test_remote_faults_are_coded(fake_pipeline, raw_server, monkeypatch, allow_private_urls,
                                 behaviour, code):
    monkeypatch.setattr(fetch_mod, "FetchRetry", lambda: FAST_RETRY)  # the handler's default
    server = raw_server(behaviour)
    out = run(url_input(f"{server.url}/a.png"))
    assert code_of(out) == code, out
    assert "refresh_worker" not in out
    # the worker is healthy: the next job succeeds
    assert "error" not in run(base_input()), "worker broken after a remote fault"


FAST_RETRY = fetch_mod.FetchRetry(attempts=2, initial=0.01, maximum=0.02)


@pytest.mark.parametrize("url", [
    "http://[::1/a.png", "http://[::1]x/a.png", "http://[127.0.0.1]/", "http://host:99999/a.png", "http://host:-1/",
    "http://host:port/", "http:///a.png", "https://:443/", "http://a b/", "http://h\n/",
    "ftp://example.com/a.png", "javascript:alert(1)", "//example.com/a.png", "http://\u2060/",
])
def test_malformed_urls_are_invalid_input(fake_pipeline, url):
    out = run(url_input(url))
    assert code_of(out) == "INVALID_INPUT", (url, out)
    assert "refresh_worker" not in out


def test_unresolvable_host(fake_pipeline):
    out = run(url_input("http://no-such-host.invalid/a.png"))
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and "could not be resolved" in out["error"]


# ==== 4. full matches ==============================================================================
@pytest.mark.parametrize("prefix", ["videos\n", "videos\r\n", "a/b\n", "videos\n/x", "\nvideos",
                                    "vid\x00eos", "videos ", "vidéos", "v\u2028"])
def test_key_prefix_is_matched_whole(fake_pipeline, prefix):
    out = run(base_input(output={"key_prefix": prefix}))
    assert code_of(out) == "INVALID_INPUT" and "key_prefix" in out["error"], (prefix, out)


@pytest.mark.parametrize("pose", ["w-3\x00", "w-\u0663", "w-\uff13", "w-3\x00, w-4", "w-+-3"])
def test_pose_counts_are_matched_whole(fake_pipeline, pose):
    out = run(base_input(pose=pose))
    assert code_of(out) in ("INVALID_POSE", "INVALID_INPUT"), (pose, out)
    assert fake_pipeline.calls == []


def test_whitespace_around_pose_segments_still_fine(fake_pipeline):
    assert "error" not in run(base_input(pose=" w-3 \n"))


# ==== 5. one length limit ==========================================================================
def test_one_limit_for_every_camera_form(fake_pipeline, s3_env):
    import numpy as np

    from pipeline.limits import MAX_FRAMES, MAX_LATENTS

    assert MAX_FRAMES == 4 * (MAX_LATENTS - 1) + 1
    over = MAX_LATENTS + 3
    eye = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
    K = [[400.0, 0, 416], [0, 400.0, 240], [0, 0, 1]]
    pose_json = {str(i): {"extrinsic": eye, "K": K} for i in range(over)}
    storage = storage_mod.Storage.from_env()
    import json

    storage.put_bytes("poses/long.json", json.dumps(pose_json).encode())
    cases = [
        {"pose": f"w-{over - 1}"},
        {"pose": "w-259"},
        {"pose": f"w-200, right-{over - 201}"},
        {"actions": [{"key": "w", "latents": over - 1}]},
        {"actions": [{"key": "w", "latents": 100}] * 3},
        {"pose_json": pose_json},
        {"pose_key": "poses/long.json"},
        {"pose": "w-3", "num_frames": MAX_FRAMES + 4},
    ]
    for extra in cases:
        inp = {k: v for k, v in base_input().items() if k != "pose"}
        inp.update(extra)
        out = run(inp)
        assert code_of(out) in ("INVALID_FRAME_COUNT", "INVALID_INPUT"), (list(extra), out)
        assert str(MAX_LATENTS) in out["error"] or str(MAX_FRAMES) in out["error"] or \
            "at most" in out["error"], out
    assert fake_pipeline.calls == []  # nothing reached generation
    # exactly at the limit is accepted (and reaches generation)
    out = run(base_input(pose=f"w-{MAX_LATENTS - 1}", num_frames=MAX_FRAMES))
    assert "error" not in out, out
    assert fake_pipeline.calls[-1].camera.num_latents == MAX_LATENTS
    np.testing.assert_equal(out["num_frames"], MAX_FRAMES)


# ==== 6. disk full =================================================================================
def _open_fds():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def _bucket_objects(storage, prefix):
    return sorted(o.object_name for o in storage._client.list_objects(storage.bucket, prefix=prefix,
                                                                       recursive=True))


def _video_on_dev_full(monkeypatch):
    """The job's temp dir holds video.mp4 as a link to /dev/full (written through, never replaced)."""
    import tempfile

    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        os.symlink("/dev/full", os.path.join(path, "video.mp4"))
        return path

    monkeypatch.setattr(worker_job.tempfile, "mkdtemp", mkdtemp)
    return lambda: monkeypatch.setattr(worker_job.tempfile, "mkdtemp", real_mkdtemp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full")
def test_disk_full_while_writing_the_video(fake_pipeline, storage, monkeypatch, tmp_path):
    """/dev/full fails every write with ENOSPC, like a full temp filesystem. The preview segments
    cut before the failure are removed with their playlist: the job leaves nothing in the bucket."""
    restore = _video_on_dev_full(monkeypatch)
    before = _open_fds()
    tmpdir = Path(os.environ["WORLDPLAY_TMPDIR"])
    out = run(base_input(pose="w-7"))
    restore()
    assert code_of(out) == "DISK_FULL", out
    assert _bucket_objects(storage, "") == []
    assert out.get("refresh_worker") is True
    assert "WORLDPLAY_TMPDIR" in out["error"]
    leaked = {fd: target for fd, target in _open_fds().items()
              if fd not in before and ("full" in target or "video.mp4" in target)}
    assert leaked == {}
    # the job's temp dir is gone and the next job is fine
    assert list(tmpdir.iterdir()) == []
    assert "error" not in run(base_input())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full")
def test_disk_full_with_the_real_pipeline(real_pipeline, storage, monkeypatch):
    """The real pipeline returns a world state too: a job whose video failed stores none of it."""
    _video_on_dev_full(monkeypatch)
    before = _open_fds()
    out = run(base_input(pose="w-7"), "full-real")
    assert code_of(out) == "DISK_FULL" and out["refresh_worker"] is True
    assert {fd: t for fd, t in _open_fds().items() if fd not in before and "full" in t} == {}
    assert _bucket_objects(storage, "") == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full")
def test_disk_full_keeps_the_preview_when_asked(fake_pipeline, storage, monkeypatch):
    """WORLDPLAY_PREVIEW_KEEP_FAILED=1: the failed job's playlist stays, closed, listing what was cut
    before the failure (still no video and no world state)."""
    import requests

    monkeypatch.setenv("WORLDPLAY_PREVIEW_KEEP_FAILED", "1")
    _video_on_dev_full(monkeypatch)
    out = run(base_input(pose="w-15"), "full-keep")
    assert code_of(out) == "DISK_FULL", out
    kept = _bucket_objects(storage, "")
    assert kept and all(k.startswith("worldplay/full-keep/preview/") for k in kept), kept
    assert "worldplay/full-keep/preview/index.m3u8" in kept
    url, _ = storage.presigned_get("worldplay/full-keep/preview/index.m3u8")
    text = requests.get(url, timeout=10).text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    listed = [line.split("?")[0].rsplit("/", 1)[1] for line in text.splitlines() if line.startswith("http")]
    assert sorted(f"worldplay/full-keep/preview/{name}" for name in listed) == [
        k for k in kept if k.endswith(".ts")]


def test_a_job_failing_after_its_state_was_saved_removes_it(real_pipeline, storage, monkeypatch):
    """Nobody learns the state key of a failed job: a failure after the state went up (here, building
    the output) removes it, with the preview."""
    import schemas

    def broken_output(**fields):
        assert fields["state_key"] == "worldplay/late-fail/world.safetensors"
        assert storage.stat_size(fields["state_key"]) > 0  # it was stored
        raise RuntimeError("output could not be built")

    monkeypatch.setattr(schemas, "JobOutput", broken_output)
    out = run(base_input(pose="w-3"), "late-fail")
    assert code_of(out) == "INTERNAL_ERROR", out
    assert [k for k in _bucket_objects(storage, "worldplay/late-fail/")
            if not k.endswith("video.mp4")] == []


def test_mp4_writer_abort_releases_the_file_when_close_fails(tmp_path):
    import numpy as np

    from pipeline.video import Mp4Writer

    link = tmp_path / "full.mp4"
    link.symlink_to("/dev/full")
    before = _open_fds()
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    for background in (False, True):
        with pytest.raises(OSError) as exc:
            with Mp4Writer(link, 24, background=background) as writer:
                writer.write(frames)
        assert exc.value.errno == 28
        if not link.exists():
            link.symlink_to("/dev/full")
    assert {fd: t for fd, t in _open_fds().items() if fd not in before and "full" in t} == {}


def test_errno_mapping():
    from worker.errors import from_exception

    err = from_exception(OSError(28, "No space left on device", "/tmp/wp/video.mp4"))
    assert err.code == "DISK_FULL" and "/tmp/wp" in err.message and err.refresh_worker
    assert from_exception(OSError(122, "Disk quota exceeded")).code == "DISK_FULL"
    assert from_exception(OSError(5, "I/O error")).code == "INTERNAL_ERROR"


# ==== 7. storage blips during the upload ===========================================================
class FlakyProxy:
    """A TCP proxy in front of moto: the first ``drop`` connections are cut (after ``cut_after``
    bytes of the request, 0 = at once); later ones are forwarded."""

    def __init__(self, upstream_port, drop, cut_after=0, on_connect=None):
        self.upstream_port = upstream_port
        self.drop = drop
        self.cut_after = cut_after
        self.on_connect = on_connect
        self.connections = 0
        self.first_lines = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.on_connect:
                self.on_connect()
            threading.Thread(target=self._serve, args=(client, self.connections <= self.drop),
                             daemon=True).start()

    def _serve(self, client, cut):
        with client:
            client.settimeout(10)
            if cut:
                got = 0
                while got < self.cut_after:
                    data = client.recv(65536)
                    if not data:
                        break
                    got += len(data)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with upstream:
                first = [True]

                def pump(src, dst, record):
                    try:
                        while True:
                            data = src.recv(65536)
                            if not data:
                                break
                            if record and first[0]:
                                self.first_lines.append(data.split(b"\r\n", 1)[0])
                                first[0] = False
                            dst.sendall(data)
                    except OSError:
                        pass
                    finally:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass

                t = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
                t.start()
                pump(client, upstream, True)
                t.join(10)

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def fake_clock(monkeypatch):
    """Storage's upload sleeps advance a fake clock instead of waiting."""
    state = {"now": 1000.0, "sleeps": []}

    def sleep(seconds):
        state["sleeps"].append(seconds)
        state["now"] += seconds

    monkeypatch.setattr(storage_mod.Storage, "_sleep", staticmethod(sleep))
    monkeypatch.setattr(storage_mod.Storage, "_clock", staticmethod(lambda: state["now"]))
    return state


def _via_proxy(monkeypatch, s3_env, proxy):
    """Storage through the proxy; the upload is the first request it sees: the validate stage's
    bucket check counts as passed (it would meet the blip first and fail the job before any work,
    which tests/test_delivery.py covers) and the live preview, which uploads too, is off."""
    monkeypatch.setenv("MINIO_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("MINIO_RETRY_ATTEMPTS", "1")
    monkeypatch.setenv("WORLDPLAY_PREVIEW", "0")
    monkeypatch.setattr(delivery.BUCKET_CHECK, "ensure", lambda storage: None)
    worker_job.reset_state(loader=worker_job.MODELS.loader)


def test_upload_survives_a_storage_blip(fake_pipeline, s3_env, s3_server, monkeypatch, fake_clock):
    upstream = int(s3_server.rsplit(":", 1)[1])
    files_seen = []
    tmpdir = Path(s3_env["WORLDPLAY_TMPDIR"])
    proxy = FlakyProxy(upstream, drop=6,
                       on_connect=lambda: files_seen.append(len(list(tmpdir.glob("*/video.mp4")))))
    try:
        _via_proxy(monkeypatch, s3_env, proxy)
        out = run(base_input(pose="w-7"))
        assert "error" not in out, out
    finally:
        proxy.close()
    assert proxy.connections == 7
    assert files_seen == [1] * 7  # the local video is kept while the upload retries
    sleeps = fake_clock["sleeps"]
    assert len(sleeps) == 6
    assert all(0.5 <= s <= 1.0 * 2 ** i for i, s in enumerate(sleeps))  # exponential, jittered
    assert sleeps[-1] > sleeps[0]
    assert all(line.startswith(b"PUT ") and b"uploads" not in line for line in proxy.first_lines)
    monkeypatch.setenv("MINIO_ENDPOINT", s3_server)
    data = storage_mod.Storage.from_env().get_bytes(out["minio_key"], 50 * 2**20)
    assert data[4:8] == b"ftyp"
    assert list(tmpdir.iterdir()) == []


def test_upload_gives_up_after_the_window(fake_pipeline, s3_env, s3_server, monkeypatch,
                                          fake_clock):
    upstream = int(s3_server.rsplit(":", 1)[1])
    proxy = FlakyProxy(upstream, drop=10**6, cut_after=2000)  # a PUT cut off mid-body, every time
    try:
        _via_proxy(monkeypatch, s3_env, proxy)
        monkeypatch.delenv("MINIO_UPLOAD_RETRY_SECONDS", raising=False)
        out = run(base_input(pose="w-7"), job_id="gives-up")
    finally:
        proxy.close()
    assert code_of(out) == "STORAGE_UNAVAILABLE", out
    assert "over 120 s" in out["error"] and "refresh_worker" not in out
    assert sum(fake_clock["sleeps"]) == pytest.approx(120.0)  # the default window, used fully
    assert max(fake_clock["sleeps"]) <= storage_mod.UPLOAD_BACKOFF_MAX
    monkeypatch.setenv("MINIO_ENDPOINT", s3_server)
    storage = storage_mod.Storage.from_env()
    listed = list(storage._client.list_objects(storage.bucket, recursive=True))
    assert [o.object_name for o in listed if "gives-up" in o.object_name] == []  # nothing partial
    assert list(Path(s3_env["WORLDPLAY_TMPDIR"]).iterdir()) == []


def test_upload_window_setting(monkeypatch, fake_clock, s3_env):
    assert storage_mod.upload_window({}) == 120.0 >= 60
    assert storage_mod.upload_window({"MINIO_UPLOAD_RETRY_SECONDS": "300"}) == 300.0
    for bad in ("-1", "soon", "99999"):
        with pytest.raises(Exception) as exc:
            storage_mod.upload_window({"MINIO_UPLOAD_RETRY_SECONDS": bad})
        assert exc.value.code == "STORAGE_NOT_CONFIGURED"


def test_upload_does_not_retry_permanent_errors(s3_env, monkeypatch, fake_clock, tmp_path):
    monkeypatch.setenv("MINIO_BUCKET", "no-such-bucket-13")
    path = tmp_path / "v.mp4"
    path.write_bytes(b"video")
    with pytest.raises(Exception) as exc:
        storage_mod.Storage.from_env().put_file("k/video.mp4", path)
    assert exc.value.code == "BUCKET_NOT_FOUND" and fake_clock["sleeps"] == []
    assert path.exists()
