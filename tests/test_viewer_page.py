"""viewer/index.html at 1280x800 (issue 23, item 5): the status line is above the video and inside
the viewport, and a link carries the playlist URL as pasted — URL-encoded (what
`python -m tools.serve_viewer --url` prints) or a raw presigned URL with its own `?`, `&` and `%2F` —
to the exact URL the player requests. Headless Chromium through Playwright, as tests/test_live_browser.py."""

from __future__ import annotations

import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.serve_viewer import start, viewer_link

from playwright import sync_api as playwright_api  # noqa: E402 - requirements-dev.txt

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio"]
PLAYLIST = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:EVENT\n"


def chromium_binary():
    for name in (os.environ.get("WORLDPLAY_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_binary()
    if path is None:
        if os.environ.get("WORLDPLAY_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (WORLDPLAY_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium; bash .ci/run does it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def bucket():
    """A stand-in for the bucket: records each request's path + query, answers an open playlist."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            body = PLAYLIST.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def viewer():
    httpd, base = start(port=0)
    yield base
    httpd.shutdown()
    httpd.server_close()


PRESIGNED_PATH = ("/videos/worldplay/job-1/preview/index.m3u8?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                  "&X-Amz-Credential=key%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
                  "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123")


@pytest.mark.parametrize("form", ["encoded", "raw"])
def test_status_above_the_video_in_view_and_the_link_plays_the_url_as_pasted(browser, viewer, bucket, form):
    bucket_base, seen = bucket
    presigned = bucket_base + PRESIGNED_PATH
    url = viewer_link(viewer, presigned) if form == "encoded" else f"{viewer}/index.html?src={presigned}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        problems = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(url)
        # the player asked the bucket for exactly the presigned URL (every parameter, %2F kept)
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert seen and seen[-1] == PRESIGNED_PATH, seen
        seen.clear()
        assert page.input_value("#src") == presigned
        status = page.locator("#status").bounding_box()
        video = page.locator("#video").bounding_box()
        assert status["y"] >= 0 and status["y"] + status["height"] <= 800, status  # in the viewport
        assert status["y"] + status["height"] <= video["y"], (status, video)  # above the video
        assert video["y"] < 800  # the video starts on screen too
        assert not problems, problems
    finally:
        context.close()


def test_source_parsing_keeps_encoded_and_raw_urls(browser, viewer):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{viewer}/index.html")
        parse = "s => window.viewer.sourceFrom(s)"
        raw = "https://s3.example.com/b/k/index.m3u8?X-Amz-A=1&X-Amz-Credential=a%2Fb&X-Amz-S=9"
        assert page.evaluate(parse, "?src=" + raw) == raw
        assert page.evaluate(parse, "?autoplay=1&src=" + raw) == raw
        from urllib.parse import quote

        assert page.evaluate(parse, "?src=" + quote(raw, safe="")) == raw
        assert page.evaluate(parse, "?src=" + quote(raw, safe="") + "&t=5") == raw
        assert page.evaluate(parse, "?other=1") is None
    finally:
        context.close()


def test_serve_viewer_link_encodes_the_url():
    link = viewer_link("http://127.0.0.1:8080", "https://h/p/index.m3u8?a=1&b=c%2Fd")
    assert link == "http://127.0.0.1:8080/index.html?src=https%3A%2F%2Fh%2Fp%2Findex.m3u8%3Fa%3D1%26b%3Dc%252Fd"
    assert viewer_link("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/index.html"
