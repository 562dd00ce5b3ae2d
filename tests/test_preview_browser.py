"""The repository's viewer (viewer/index.html, hls.js) plays a job's live preview in headless
Chromium while the job is still generating, then plays it to the end once the playlist closes.

Chromium comes from the system (Debian: ``apt-get install chromium``; ``bash .ci/run`` installs it
when missing and sets WORLDPLAY_REQUIRE_BROWSER=1, so there a missing browser fails instead of
skipping). The page and the S3 server (moto, CORS set on the test bucket) are on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import b64, chromium_path, png_bytes

from worker import job as worker_job

REPO = Path(__file__).resolve().parents[1]
VIEWER = REPO / "viewer"
WAIT = 90  # bound on each wait (seconds); a cold Chromium on 2 busy cores needs a few

# injected into the served page (the viewer itself stays free of test code): reports what the
# <video> does to the test server
REPORTER = """<script>
(function () {
  var v = document.getElementById("video"), sent = {};
  function report(kind, extra) {
    if (sent[kind] && kind !== "tick") { return; }
    sent[kind] = true;
    var body = {kind: kind, currentTime: v.currentTime, duration: v.duration,
                live: window.viewer.live, status: document.getElementById("status").textContent};
    for (var k in (extra || {})) { body[k] = extra[k]; }
    fetch("/report", {method: "POST", body: JSON.stringify(body)});
  }
  v.addEventListener("timeupdate", function () { if (v.currentTime > 0) { report("playing"); } });
  v.addEventListener("ended", function () { report("ended"); });
  setInterval(function () {
    var n = v.buffered.length;
    var b = n ? v.buffered.start(0) + "-" + v.buffered.end(n - 1) : "";
    report("tick", {buffered: b, paused: v.paused, readyState: v.readyState,
                    ranges: v.buffered.length});
  }, 1000);
  if (window.viewer.hls) {
    window.viewer.hls.on(Hls.Events.ERROR, function (_, d) {
      if (d.fatal) { report("error", {details: d.type + "/" + d.details}); }
    });
  } else { report("error", {details: "hls.js is not in use"}); }
})();
</script>
"""


@pytest.fixture
def chromium():
    return chromium_path()


class ViewerServer:
    """Serves viewer/ (with REPORTER injected into index.html) and collects POST /report."""

    def __init__(self):
        self.reports = []
        self.arrived = threading.Condition()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.split("?")[0] in ("/", "/index.html"):
                    page = (VIEWER / "index.html").read_text().replace("</body>",
                                                                      REPORTER + "</body>")
                    body = page.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.arrived:
                    server.reports.append((time.perf_counter(), json.loads(data)))
                    server.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(VIEWER)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, kind, timeout=WAIT):
        def found():
            return next(((t, r) for t, r in self.reports if r["kind"] in (kind, "error")), None)

        with self.arrived:
            self.arrived.wait_for(found, timeout)
            return found()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_chromium_plays_the_live_preview_while_the_job_runs(chromium, real_pipeline, storage,
                                                           monkeypatch, tmp_path):
    import boto3
    import runpod

    from pipeline import video

    # the page (one origin) reads the playlist and segments from S3 (another origin)
    s3 = boto3.client("s3", endpoint_url=os.environ["MINIO_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=os.environ["MINIO_ACCESS_KEY"],
                      aws_secret_access_key=os.environ["MINIO_SECRET_KEY"])
    s3.put_bucket_cors(Bucket=storage.bucket, CORSConfiguration={"CORSRules": [{
        "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"]}]})

    preview_url = {}
    first_update = threading.Event()

    def progress_update(job, payload):
        if "preview_url" in payload and not first_update.is_set():
            preview_url["url"] = payload["preview_url"]
            first_update.set()

    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "http://127.0.0.1:9/job-take/$ID")
    monkeypatch.setattr(runpod.serverless, "progress_update", progress_update)

    viewer = ViewerServer()
    playing = {}

    # the tiny model renders in a blink; hold its last chunk until the browser plays (a GPU takes
    # ~2 s per chunk, a real job ~25 s in all): the job is still generating while Chromium plays
    real_write = video.Mp4Writer.write
    written = []

    def write(self, frames):
        written.append(len(frames))
        if len(written) == 4:
            playing["report"] = viewer.wait("playing")
        return real_write(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", write)

    result = {}

    def job():
        result["out"] = asyncio.run(worker_job.handler({"id": "browser-1", "input": {
            "prompt": "a harbour", "image_base64": b64(png_bytes(128, 72)), "pose": "w-15",
            "seed": 3}}))
        result["done_at"] = time.perf_counter()

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    browser = None
    try:
        assert first_update.wait(WAIT), "no progress update carried preview_url"
        page = f"{viewer.url}/index.html?src={requests_quote(preview_url['url'])}"
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--mute-audio",
             "--autoplay-policy=no-user-gesture-required",
             f"--user-data-dir={tmp_path / 'profile'}",
             page],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        runner.join(WAIT * 2)
        assert not runner.is_alive(), "the job did not finish"
        out = result["out"]
        assert "error" not in out, out

        report = playing.get("report")
        assert report is not None, ("Chromium never started playing", viewer.reports[-3:])
        played_at, body = report
        assert body["kind"] == "playing", body  # not a player error
        assert played_at < result["done_at"]  # playback started while the job was generating
        assert body["live"] is True  # from a playlist without #EXT-X-ENDLIST yet
        assert body["currentTime"] > 0

        # the playlist closes and the player plays the whole clip to its end
        ended = viewer.wait("ended")
        assert ended is not None and ended[1]["kind"] == "ended", viewer.reports[-3:]
        assert ended[1]["currentTime"] >= out["num_frames"] / out["fps"] - 0.05, ended
        assert ended[1]["live"] is False
    finally:
        if browser is not None:
            try:
                os.killpg(browser.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(browser.pid, signal.SIGKILL)
                browser.wait(10)
        viewer.close()
        runner.join(WAIT)


def requests_quote(url: str) -> str:
    from urllib.parse import quote

    return quote(url, safe="")
