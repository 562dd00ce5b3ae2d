"""The live playground (viewer/live.html) in headless Chromium against the real live server.

The server is worker.live's app on a real uvicorn on 127.0.0.1 (as in tests/test_live_server.py).
Chromium (Debian's, driven by Playwright through ``executable_path``: Playwright downloads no
browser here) opens ``GET /``, sets a test picture, connects, holds W for several chunks, taps D,
and the test checks what a person would see: frames play from MediaSource, the minimap has the path,
and the camera moved the way the keys said (OpenCV axes of pipeline/generation/camera.py: W walks
+z, D steps +x). Key-press-to-first-frame-on-screen and the chunk cadence are printed (``-s``).

- ``test_playground_steers_a_tiny_world``: the tiny random-weight model on the CPU with moto S3;
  the saved world state's cameras are read back from the bucket and the recording link is the
  ``closed`` message's presigned URL. Needs the World engine (pipeline.generation.world).
- ``test_playground_steers_a_stand_in_world``: the same page and server with a stand-in world
  (docs/LIVE.md's engine API, gradient frames, the real camera integration) and no storage: the
  recording the page offers is the Blob of init segment + fragments it kept.
- ``test_playground_layout``: at 1280x800 and 390x844 the video, the connect button and the key
  controls are inside the viewport; every control has an accessible name.

Chromium missing: skipped, or failed with WORLDPLAY_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pytest

from tests.conftest import LiveServer, chromium_path, png_bytes

from playwright import sync_api as playwright_api  # noqa: E402 - requirements-dev.txt

WAIT_MS = 60_000  # bound on each wait in the page
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
SIZES = [(1280, 800), (390, 844)]


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def live_server():
    from worker.live_session import LiveSettings

    srv = LiveServer(LiveSettings(idle_seconds=60.0, max_seconds=300.0, max_queued_actions=8, token=None,
                                  origins=(), allow_no_token=False, max_session_latents=1024))
    yield srv
    srv.stop()


# ---- a stand-in world: docs/LIVE.md's engine API without a model -------------------------------
class StandInWorld:
    width, height, fps, mode, decoder = 128, 72, 24.0, "ar", "fast"

    def __init__(self, prompt, seed):
        self.prompt, self.seed = prompt, int(seed)
        self.num_latents, self.index = 0, 0
        self.pose = np.eye(4)
        self.items = []

    def step(self, actions, should_cancel=None, callback=None):
        from pipeline.generation import camera

        moves = 3 if self.index == 0 else 4  # chunk 0: the start latent + 3 moves
        item = actions.item(moves)  # the real ChunkActions: the cameras a World would use
        path = camera.parse_pose([item]) if self.index == 0 else camera.continue_pose([item], self.pose)
        c2w = path.c2w64
        self.pose = c2w[-1].copy()
        n = 13 if self.index == 0 else 16
        t = np.arange(n)[:, None, None] + 16 * self.index
        y, x = np.arange(self.height)[None, :, None], np.arange(self.width)[None, None, :]
        base = (x * 2 + y + t * 6 + self.seed) % 256
        frames = np.stack([base, (base + 85) % 256, 255 - base], -1).astype(np.uint8)
        time.sleep(0.15)  # something like a small model's step
        self.items.append(item)
        chunk = types.SimpleNamespace(index=self.index, frames=frames, c2w=c2w[-4:], action=item,
                                      timings={"denoise": 0.15})
        self.index += 1
        self.num_latents += 4
        return chunk

    def set_prompt(self, prompt):
        self.prompt = prompt

    def state(self):
        return None  # the stand-in runs without storage: nothing is saved

    def actions(self):
        return list(self.items)

    def close(self):
        pass


class StandInPipeline:
    modes = ("ar",)

    def health(self):
        return {"modes": ["ar"], "device": "cpu", "stand_in": True}

    def open_world(self, prompt, image, seed=0, negative_prompt="", mode="ar", **_):
        return StandInWorld(prompt, seed)


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """The stand-in pipeline as the worker's model; no MINIO_* (inline: nothing stored)."""
    from worker import job as worker_job

    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET",
                 "MINIO_PUBLIC_ENDPOINT", "RUNPOD_WEBHOOK_GET_JOB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLDPLAY_MODES", "ar")
    monkeypatch.setenv("WORLDPLAY_TMPDIR", str(tmp_path))
    import pipeline.generation.world  # noqa: F401  imported now, not inside the first chunk (torch)

    saved = worker_job.MODELS.loader
    pipe = StandInPipeline()
    worker_job.reset_state(loader=lambda modes: pipe)
    yield pipe
    worker_job.reset_state(loader=saved)


# ---- driving the page ---------------------------------------------------------------------------
def _open_page(browser, url, size):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                  has_touch=size[0] < 500, accept_downloads=True)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    page.wait_for_function("window.live && window.live.state === 'idle'", timeout=WAIT_MS)
    return context, page, problems


def _wait(page, condition, what):
    try:
        page.wait_for_function(condition, timeout=WAIT_MS)
    except playwright_api.TimeoutError:
        snapshot = page.evaluate("() => ({state: live.state, chunks: live.chunks.length, errors: live.errors,"
                                 " media: live.mediaErrors, log: live.log.slice(-12)})")
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(snapshot, indent=1)}") from None


def drive(browser, url, *, save: bool):
    """Connect, hold W for 3+ chunks, tap D; save (optional) and close. Returns what the page saw."""
    context, page, problems = _open_page(browser, url, SIZES[0])
    try:
        page.set_input_files("#image-file", files=[{"name": "start.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(128, 72)}])
        page.fill("#prompt", "a quiet street")
        page.fill("#seed", "3")
        page.click("#connect")
        _wait(page, "live.state === 'open'", "ready")
        page.evaluate("document.activeElement && document.activeElement.blur()")  # keys steer
        page.keyboard.down("w")
        _wait(page, "live.chunks.length >= 3", "three chunks while W is held")
        page.keyboard.up("w")
        _wait(page, "live.inflight === 0", "the last W chunk")
        w_chunks = page.evaluate("live.chunks.length")
        page.keyboard.press("d")
        _wait(page, f"live.chunks.length === {w_chunks + 1} && live.inflight === 0 && "
                    f"live.chunks[{w_chunks}].shownAt != null", "the D chunk on screen")
        page.wait_for_timeout(300)
        seen = page.evaluate("""() => {
            const v = document.getElementById('video');
            return {currentTime: v.currentTime, frames: v.getVideoPlaybackQuality().totalVideoFrames,
                    dropped: v.getVideoPlaybackQuality().droppedVideoFrames, mediaError: v.error && v.error.code,
                    path: live.path, errors: live.errors, mediaErrors: live.mediaErrors, clock: live.frameClock,
                    chunks: live.chunks.map(c => ({index: c.index, key: c.action.key, frames: c.frames,
                        source: c.source, latency: c.latency, generate: c.timings.generate,
                        receivedAt: c.receivedAt, shownAt: c.shownAt, startTime: c.startTime})),
                    cadence: live.cadence,
                    mapInk: (() => { const m = document.getElementById('minimap');
                        const d = m.getContext('2d').getImageData(0, 0, m.width, m.height).data;
                        let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n; })()};
        }""")
        if save:
            page.click("#save")
            _wait(page, "live.stateKey !== null || live.errors.length > 0", "saved")
            seen["saved_key"] = page.evaluate("live.stateKey")
        page.click("#close")
        _wait(page, "live.state === 'idle' && live.closed !== null", "closed")
        seen["closed"] = page.evaluate("live.closed")
        seen["errors_after"] = page.evaluate("live.errors")
        link = page.locator("#recording")
        seen["recording_href"] = link.get_attribute("href")
        if seen["recording_href"].startswith("blob:"):
            with page.expect_download() as download:
                link.click()
            seen["recording_bytes"] = open(download.value.path(), "rb").read()
        seen["problems"] = problems
        return seen
    finally:
        context.close()


def _report(name, seen):
    keyed = [c["latency"] for c in seen["chunks"] if c["source"] in ("keyboard", "button") and c["latency"]]
    cadence = seen["cadence"]
    print(f"\n[{name}] key press -> first frame of its chunk on screen: "
          + ", ".join(f"{x * 1000:.0f} ms" for x in keyed)
          + f"; chunk cadence (held W): " + ", ".join(f"{x * 1000:.0f} ms" for x in cadence)
          + f"; generate: " + ", ".join(f"{c['generate'] * 1000:.0f} ms" for c in seen["chunks"])
          + f"; frames played {seen['frames']}, currentTime {seen['currentTime']:.2f} s ({seen['clock']})")
    return keyed


def _check_page(seen):
    assert not seen["errors"] and not seen["mediaErrors"] and not seen["mediaError"], seen
    assert not seen["errors_after"], seen["errors_after"]
    assert not [p for p in seen["problems"] if "favicon" not in p], seen["problems"]
    chunks = seen["chunks"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["frames"] == 13 and all(c["frames"] == 16 for c in chunks[1:])
    w, d = chunks[:-1], chunks[-1]
    assert len(w) >= 3 and all(c["key"] == "w" for c in w) and d["key"] == "d", chunks
    # the video played: frames were composited and the playhead reached the D chunk
    assert seen["frames"] > 0
    assert seen["currentTime"] >= d["startTime"] > 0
    assert all(c["shownAt"] is not None for c in chunks)
    # the minimap: one point per chunk and ink on the canvas
    path = seen["path"]
    assert len(path) == len(chunks) and seen["mapInk"] > 100
    zs = [p["z"] for p in path]
    assert all(b > a for a, b in zip(zs, zs[1:len(w)])) and zs[0] > 0  # W: forward is +z
    assert path[-1]["x"] > path[-2]["x"] + 0.05  # D: right is +x
    assert abs(path[-1]["z"] - path[-2]["z"]) < 1e-6
    closed = seen["closed"]
    assert closed["reason"] == "close" and closed["chunks"] == len(chunks)
    keys = [item["key"] for item in closed["actions"]]
    assert set(keys[:-1]) == {"w"} and keys[-1] == "d", closed["actions"]
    assert sum(item["moves"] for item in closed["actions"]) == 4 * len(chunks) - 1


def test_playground_steers_a_stand_in_world(browser, stand_in, live_server):
    seen = drive(browser, live_server.page, save=False)
    _report("stand-in world", seen)
    _check_page(seen)
    # no storage: the page's own recording (init segment + every fragment) is a playable MP4
    import io

    import av

    data = seen["recording_bytes"]
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        assert sum(1 for _ in container.decode(video=0)) == sum(c["frames"] for c in seen["chunks"])


def test_playground_steers_a_tiny_world(browser, real_pipeline, storage, live_server):
    from pipeline.generation.world_state import WorldState

    seen = drive(browser, live_server.page, save=True)
    _report("tiny model, CPU", seen)
    _check_page(seen)
    closed = seen["closed"]
    assert seen["saved_key"] and closed["state_key"]
    assert seen["recording_href"] == closed["presigned_url"]
    # the world state in the bucket: its cameras moved forward (+z), then right (+x)
    state = WorldState.from_bytes(storage.get_bytes(closed["state_key"], 2**28))
    t = state.c2w[:, :3, 3].double().numpy()
    n_w = 4 * (len(seen["chunks"]) - 1)  # latents up to the end of the last W chunk
    assert np.all(np.diff(t[:n_w, 2]) > 0) and np.allclose(t[:n_w, 0], 0, atol=1e-6)
    assert np.all(np.diff(t[n_w - 1:, 0]) > 0) and np.allclose(t[n_w - 1:, 2], t[n_w - 1, 2], atol=1e-6)


def test_playground_layout(browser, live_server, tmp_path):
    for width, height in SIZES:
        context, page, problems = _open_page(browser, live_server.page, (width, height))
        try:
            page.screenshot(path=str(tmp_path / f"live-{width}x{height}.png"))
            for selector in ["#video", "#connect", "#minimap"] + [f"[data-key={k}]" for k in
                                                                  ("w", "a", "s", "d", "up", "down", "left", "right")]:
                box = page.locator(selector).bounding_box()
                assert box is not None, selector
                assert box["x"] >= 0 and box["y"] >= 0, (selector, box, width, height)
                assert box["x"] + box["width"] <= width + 0.5, (selector, box, width, height)
                assert box["y"] + box["height"] <= height + 0.5, (selector, box, width, height)
            video = page.locator("#video").bounding_box()
            assert video["width"] >= 0.6 * width if width < 500 else video["width"] >= 640
            assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scroll
            # on a phone the pads are big enough to touch
            if width < 500:
                pad = page.locator("[data-key=w]").bounding_box()
                assert pad["width"] >= 40 and pad["height"] >= 36, pad
            unnamed = page.evaluate("""() => Array.from(document.querySelectorAll('button, input, select, textarea'))
                .filter(el => el.offsetParent !== null || el.type === 'file')
                .filter(el => !(el.getAttribute('aria-label') || (el.labels && el.labels.length &&
                                el.labels[0].textContent.trim()) || el.textContent.trim()))
                .map(el => el.outerHTML.slice(0, 80))""")
            assert not unnamed, unnamed
            assert not [p for p in problems if "favicon" not in p], problems
        finally:
            context.close()


def test_action_list_plays_one_chunk_per_row_step(browser, stand_in, live_server):
    """The editor's rows (what a game controller generates) go out one actions message per chunk."""
    context, page, problems = _open_page(browser, live_server.page, SIZES[0])
    try:
        page.set_input_files("#image-file", files=[{"name": "start.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(128, 72)}])
        page.fill("#list-json", '[{"key": "w", "moves": 8, "speed": 0.1}, {"key": "d+right", "moves": 4, "degrees": 5}]')
        page.click("#import-list")
        page.click("#connect")
        _wait(page, "live.state === 'open'", "ready")
        page.click("#play-list")
        _wait(page, "!live.listRunning && live.chunks.length === 3 && live.inflight === 0", "the list played")
        keys = page.evaluate("live.chunks.map(c => c.action.key)")
        sent = page.evaluate("live.log.filter(l => l.includes('> {\"type\":\"actions\"'))")
        assert keys == ["w", "w", "d+right"], keys
        assert len(sent) == 3 and '"speed":0.1' in sent[0] and '"degrees":5' in sent[2], sent
        path = page.evaluate("live.path")
        assert path[1]["z"] > path[0]["z"] > 0 and path[2]["yaw"] == pytest.approx(20, abs=1e-3)
        assert not page.evaluate("live.errors") and not problems
    finally:
        context.close()
