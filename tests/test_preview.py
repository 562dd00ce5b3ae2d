"""Live preview (HLS) through the real handler: progress carries preview_url while the job still
generates; the finished playlist is valid HLS closed by #EXT-X-ENDLIST whose segments decode to the
job's frames (the very pictures of the MP4: one encode); failure, cancellation and upload errors
close it without touching the job's result; request and env switches turn it off."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

import numpy as np
import pytest
import requests
from conftest import b64, decode_rgb, png_bytes, run

from worker import job as worker_job
from worker import preview as live_preview

WAIT = 60  # bound on every wait in this file (seconds); normally far less



def job_input(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes(128, 72)),
            "pose": "w-15", "seed": 7, **extra}


class _Recorded(list):
    """A list with helpers attached by the fixtures below."""


@pytest.fixture
def updates(monkeypatch):
    """Progress updates as the platform would receive them (payloads, in order)."""
    import runpod

    sent = _Recorded()
    arrived = threading.Condition()

    def progress_update(job, payload):
        with arrived:
            sent.append(payload)
            arrived.notify_all()

    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "http://127.0.0.1:9/job-take/$ID")
    monkeypatch.setattr(runpod.serverless, "progress_update", progress_update)

    def wait_for(predicate, timeout=WAIT):
        with arrived:
            arrived.wait_for(lambda: any(predicate(p) for p in sent), timeout)
        return next((p for p in sent if predicate(p)), None)

    sent.wait_for = wait_for
    return sent


@pytest.fixture
def chunks(monkeypatch):
    """Records each chunk handed to the MP4 writer; ``chunks.before(i, fn)`` runs ``fn`` in the
    job thread just before chunk ``i`` is handed over (to look at the world mid-job)."""
    from pipeline import video

    seen, hooks = _Recorded(), {}
    real_write = video.Mp4Writer.write

    def write(self, frames):
        index = len(seen)
        if index in hooks:
            hooks[index]()
        seen.append(len(frames))
        return real_write(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", write)
    seen.before = lambda index, fn: hooks.__setitem__(index, fn)
    return seen


def parse_playlist(text):
    """Structural HLS checks; returns [(duration, uri)] and whether it is closed."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    target = int(next(line for line in lines if line.startswith("#EXT-X-TARGETDURATION:"))
                 .split(":")[1])
    entries = []
    for i, line in enumerate(lines):
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:"):].rstrip(",").split(",")[0])
            assert 0 < duration <= target + 0.5
            uri = lines[i + 1]
            assert not uri.startswith("#") and uri.startswith("http")
            entries.append((duration, uri))
    ended = lines[-1] == "#EXT-X-ENDLIST"
    assert lines.count("#EXT-X-ENDLIST") == int(ended)
    return entries, ended


def decode_segments(entries):
    """The segments in playlist order, decoded as one stream the way a player appends them (by
    default a segment continues the previous one's GOP; only the first must start with an IDR)."""
    import av

    data = []
    for index, (_, uri) in enumerate(entries):
        got = requests.get(uri, timeout=10)
        assert got.status_code == 200 and got.headers["Content-Type"] == "video/mp2t"
        with av.open(io.BytesIO(got.content), format="mpegts") as container:
            packets = [p for p in container.demux(video=0) if p.size]
        assert packets, "a segment without pictures"
        if index == 0:
            assert packets[0].is_keyframe, "the first segment must start with a keyframe"
        data.append(got.content)
    with av.open(io.BytesIO(b"".join(data)), format="mpegts") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _query(url):
    from urllib.parse import parse_qs, urlsplit

    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def signed_at(url):
    """When a presigned URL was signed (its X-Amz-Date)."""
    from datetime import datetime, timezone

    return datetime.strptime(_query(url)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def url_expires(url):
    """When a presigned URL stops working (X-Amz-Date + X-Amz-Expires)."""
    from datetime import timedelta

    return signed_at(url) + timedelta(seconds=int(_query(url)["X-Amz-Expires"]))


def iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def playlist(url):
    got = requests.get(url, timeout=10)
    assert got.status_code == 200, got.text[:200]
    assert got.headers["Content-Type"] == live_preview.PLAYLIST_TYPE
    return got.text


# ---- the whole flow with the REAL tiny pipeline ------------------------------------------------
def test_live_preview_through_the_real_handler(real_pipeline, storage, updates, chunks, tmp_path):
    seen_mid_job = {}

    def before_last_chunk():
        # a client polling /status gets the playlist while the last chunk is still to come
        first = updates.wait_for(lambda p: "preview_url" in p)
        assert first is not None, "no progress update with preview_url before the last chunk"
        seen_mid_job["update"] = first
        seen_mid_job["playlist"] = playlist(first["preview_url"])

    chunks.before(3, before_last_chunk)  # w-15: 16 latents -> chunks of 13, 16, 16, 16 frames
    t0 = time.perf_counter()
    out = run(job_input(), "live-1")
    assert "error" not in out, out
    assert chunks == [13, 16, 16, 16]

    first = seen_mid_job["update"]
    assert first["preview_segments"] == 1 and first["stage"]  # sent on the first segment itself
    entries, ended = parse_playlist(seen_mid_job["playlist"])
    assert not ended and len(entries) >= 1  # live: players keep polling

    # the final output names the playlist (a URL signed as the job ended); it is closed and lists
    # every frame of the video
    assert out["preview_key"] == "worldplay/live-1/preview/index.m3u8"
    assert out["preview_url"].split("?")[0] == first["preview_url"].split("?")[0]
    assert signed_at(out["preview_url"]) >= signed_at(first["preview_url"])
    text = playlist(out["preview_url"])
    entries, ended = parse_playlist(text)
    assert ended and len(entries) == out["preview_segments"] == 4
    assert sum(d for d, _ in entries) == pytest.approx(out["num_frames"] / out["fps"], abs=1e-3)
    assert [round(d * out["fps"]) for d, _ in entries] == [13, 16, 16, 16]

    # the segments decode to exactly the job's frames, the same pictures as the MP4 (one encode)
    preview_frames = decode_segments(entries)
    mp4 = tmp_path / "video.mp4"
    mp4.write_bytes(storage.get_bytes(out["minio_key"], 2**26))
    mp4_frames = decode_rgb(mp4)
    assert preview_frames.shape[0] == out["num_frames"] == 61
    assert np.array_equal(preview_frames, mp4_frames)
    assert time.perf_counter() - t0 < WAIT


def test_urls_are_signed_afresh_and_outlive_the_job(fake_pipeline, storage, updates, chunks):
    """presign_expiry_seconds 60 at fps 5: each progress update and the output carry a playlist URL
    signed when they are sent, with preview_expires_at; the final playlist's segment URIs are signed
    as the job ends (not when each segment went up), so all of it plays for 60 s after the job; and
    #EXT-X-TARGETDURATION is 4 (16 frames / 5 fps, rounded up) in the very first playlist, although the
    first segment is only 13 frames long (2.6 s)."""
    from datetime import datetime, timedelta, timezone

    seen = {}

    def later():
        time.sleep(1.1)  # the job takes a while between chunks: signatures of different seconds

    def before_last_chunk():
        later()
        first = updates.wait_for(lambda p: "preview_url" in p)
        seen["playlist"] = playlist(first["preview_url"])

    chunks.before(1, later)
    chunks.before(2, before_last_chunk)
    out = run(job_input(pose="w-11", fps=5, output={"presign_expiry_seconds": 60}), "fresh-1")
    ended_at = datetime.now(timezone.utc)
    assert "error" not in out, out

    listed = [p for p in updates if "preview_url" in p]
    assert len(listed) >= 2 and listed[0]["preview_segments"] == 1
    for update in listed:  # each URL was signed when its update was made, for 60 s
        assert update["preview_expires_at"] == iso(url_expires(update["preview_url"]))
        assert int(_query(update["preview_url"])["X-Amz-Expires"]) == 60
    assert signed_at(listed[-1]["preview_url"]) > signed_at(listed[0]["preview_url"])

    mid_entries, mid_ended = parse_playlist(seen["playlist"])
    assert not mid_ended and "#EXT-X-TARGETDURATION:4" in seen["playlist"].splitlines()
    assert round(mid_entries[0][0] * 5) == 13
    final = playlist(out["preview_url"])
    assert "#EXT-X-TARGETDURATION:4" in final.splitlines()
    entries, ended = parse_playlist(final)
    assert ended and [round(d * 5) for d, _ in entries] == [13, 16, 16]

    # the output's URL and every segment URI it lists play for 60 s from the job's end (a signature
    # has whole seconds: up to 1 s of rounding, plus the time between signing and returning)
    lasts_until = ended_at + timedelta(seconds=60 - 2)
    assert url_expires(out["preview_url"]) >= lasts_until
    assert all(url_expires(uri) >= lasts_until for _, uri in entries)
    assert entries[0][1] != mid_entries[0][1]  # segment 0 was signed again
    assert out["preview_expires_at"] == min(iso(url_expires(u)) for u in
                                            [out["preview_url"]] + [uri for _, uri in entries])
    assert out["preview_expires_at"] >= iso(lasts_until)
    assert decode_segments(entries).shape[0] == out["num_frames"] == 45


def test_listed_segment_uris_are_signed_again_while_the_job_waits(storage):
    """A long gap between chunks (bidirectional: minutes) with a short expiry: the uploader signs the
    listed URIs again once half their lifetime is gone, without a new segment."""
    preview = live_preview.LivePreview(storage, "refresh/job/preview", expiry=2)
    try:
        preview._segment_made(live_preview.Segment(0, b"\x47" * 188, 13, 13 / 24))
        deadline = time.monotonic() + WAIT
        while not preview.segments and time.monotonic() < deadline:
            time.sleep(0.05)
        url, _ = preview.link()
        (_, first_uri), = parse_playlist(playlist(url))[0]
        time.sleep(2.5)  # past the first signature's expiry; the refresh runs every second
        entries, ended = parse_playlist(playlist(preview.link()[0]))
        assert not ended and len(entries) == 1
        assert signed_at(entries[0][1]) > signed_at(first_uri)
        assert url_expires(entries[0][1]) > url_expires(first_uri)
    finally:
        preview.finish(WAIT)


def test_pipeline_handing_over_everything_at_once_still_gets_short_segments(fake_pipeline, storage):
    """The fixed target duration holds for a pipeline that does not stream: the segments are cut at
    the longest chunk's length (16 frames in AR mode)."""
    fake_pipeline.stream = False
    out = run(job_input(pose="w-11", fps=8), "whole-1")
    assert "error" not in out, out
    text = playlist(out["preview_url"])
    assert "#EXT-X-TARGETDURATION:2" in text.splitlines()
    entries, ended = parse_playlist(text)
    assert ended and [round(d * 8) for d, _ in entries] == [16, 16, 13]
    assert decode_segments(entries).shape[0] == out["num_frames"] == 45


def test_a_done_job_waits_for_its_preview_once(fake_pipeline, storage, monkeypatch):
    """With the last playlist write stuck, a successful job waits FINISH_TIMEOUT once (not once more
    in its clean-up) and still answers with its video and a playable preview URL."""
    release = threading.Event()
    waits = []
    real_init = live_preview.LivePreview.__init__
    real_write = live_preview.LivePreview._write_playlist

    class CountingEvent(threading.Event):
        def wait(self, timeout=None):
            if threading.current_thread().name != "hls-preview":
                waits.append(timeout)
            return super().wait(timeout)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._done = CountingEvent()

    def write(self, **kwargs):
        if self._closed:
            release.wait(WAIT)  # the store hangs on the closing playlist
        return real_write(self, **kwargs)

    monkeypatch.setattr(live_preview.LivePreview, "__init__", init)
    monkeypatch.setattr(live_preview.LivePreview, "_write_playlist", write)
    t0 = time.perf_counter()
    out = run(job_input(pose="w-11"), "once-1")
    took = time.perf_counter() - t0
    release.set()
    assert "error" not in out, out
    assert waits == [live_preview.FINISH_TIMEOUT]
    assert took < 2 * live_preview.FINISH_TIMEOUT
    assert out["preview_url"] and out["preview_segments"] >= 1


def test_playlist_plays_in_ffmpeg_hls_demuxer(fake_pipeline, storage):
    """An independent HLS reader (FFmpeg's) follows the presigned playlist to every frame."""
    import av

    out = run(job_input(pose="w-11"), "ff-1")
    assert "error" not in out, out
    try:
        container = av.open(out["preview_url"], format="hls")
    except av.error.ProtocolNotFoundError:  # pragma: no cover - a PyAV build without http
        pytest.skip("this PyAV build has no http protocol")
    with container:
        count = sum(1 for _ in container.decode(video=0))
    assert count == out["num_frames"] == 45


# ---- the job ends badly: the playlist is still closed -------------------------------------------
def _wrap_frames(pipe, monkeypatch, after_chunks, action):
    """Make ``pipe.generate`` call ``action()`` once ``after_chunks`` chunks were handed over."""
    real_generate = pipe.generate

    def generate(request, callback=None, should_cancel=None, on_frames=None, **kw):
        count = {"n": 0}

        def frames_then_act(frames):
            on_frames(frames)
            count["n"] += 1
            if count["n"] == after_chunks:
                action()

        return real_generate(request, callback=callback, should_cancel=should_cancel,
                             on_frames=frames_then_act, **kw)

    monkeypatch.setattr(pipe, "generate", generate)


@pytest.mark.parametrize("how, code", [("fail", "GPU_ERROR"), ("cancel", "CANCELLED")])
def test_failed_or_cancelled_job_removes_its_preview(real_pipeline, storage, updates, monkeypatch,
                                                     how, code):
    """Segments were listed (a client may have played them), then the job failed: the playlist and
    every segment are gone when the job returns, and so is the uploader thread."""
    cancel = threading.Event()

    def act():
        assert updates.wait_for(lambda p: "preview_url" in p) is not None
        if how == "fail":
            raise RuntimeError("CUDA error: an illegal memory access")
        cancel.set()

    _wrap_frames(real_pipeline, monkeypatch, 3, act)
    out = worker_job.run_job({"id": f"gone-{how}", "input": job_input()}, cancel_event=cancel)
    assert out["error"].startswith(code + ":"), out
    listed = [p for p in updates if "preview_url" in p]
    assert listed and listed[-1]["preview_segments"] >= 1
    assert _objects(storage, f"worldplay/gone-{how}/") == []
    assert requests.get(listed[-1]["preview_url"], timeout=10).status_code == 404
    assert not [t for t in threading.enumerate() if t.name == "hls-preview" and t.is_alive()]


@pytest.mark.parametrize("how, code", [("fail", "GPU_ERROR"), ("cancel", "CANCELLED")])
def test_failed_or_cancelled_job_keeps_a_closed_playlist_when_asked(real_pipeline, storage, updates,
                                                                    monkeypatch, how, code):
    """WORLDPLAY_PREVIEW_KEEP_FAILED=1: what was made before the end stays, closed by #EXT-X-ENDLIST."""
    monkeypatch.setenv("WORLDPLAY_PREVIEW_KEEP_FAILED", "1")
    cancel = threading.Event()

    def act():
        assert updates.wait_for(lambda p: "preview_url" in p) is not None
        if how == "fail":
            raise RuntimeError("CUDA error: an illegal memory access")
        cancel.set()  # what the platform's stop signal does; the pipeline stops at the next step

    _wrap_frames(real_pipeline, monkeypatch, 3, act)
    out = worker_job.run_job({"id": f"end-{how}", "input": job_input()}, cancel_event=cancel)
    assert out["error"].startswith(code + ":"), out
    key = f"worldplay/end-{how}/preview/index.m3u8"
    url, _ = storage.presigned_get(key)
    entries, ended = parse_playlist(playlist(url))
    assert ended, "players would wait forever"
    # what was made before the end is listed and plays: whole chunks only
    assert 1 <= len(entries) <= 3
    frames = decode_segments(entries)
    assert frames.shape[0] in (13, 29, 45)
    assert not [t for t in threading.enumerate() if t.name == "hls-preview" and t.is_alive()]


def test_a_store_refusing_the_removal_changes_nothing_for_the_job(fake_pipeline, storage, updates,
                                                                   monkeypatch, caplog):
    """The failed job's own error is what the client gets; the removal that failed is logged."""
    from worker.errors import WorkerError
    from worker.storage import Storage

    def refuse(self, keys):
        raise WorkerError("STORAGE_ACCESS_DENIED", f"remove of {len(keys)} objects was refused")

    def act():
        assert updates.wait_for(lambda p: "preview_url" in p) is not None  # a segment is stored
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(Storage, "remove_objects", refuse)
    _wrap_frames(fake_pipeline, monkeypatch, 3, act)
    caplog.set_level(logging.WARNING, "worldplay.preview")
    out = run(job_input(), "refused-1")
    assert out["error"].startswith("GPU_ERROR:"), out
    assert "could not remove its objects: STORAGE_ACCESS_DENIED" in caplog.text
    assert "worldplay/refused-1/preview/index.m3u8" in _objects(storage, "worldplay/refused-1/")
    assert not [t for t in threading.enumerate() if t.name == "hls-preview" and t.is_alive()]


def test_upload_failure_ends_the_preview_not_the_job(fake_pipeline, storage, monkeypatch, caplog):
    from worker.storage import Storage

    real_put = Storage.put_bytes

    def put_bytes(self, key, data, *args, **kwargs):
        if key.endswith(".ts"):
            raise ConnectionResetError("peer went away")
        return real_put(self, key, data, *args, **kwargs)

    monkeypatch.setattr(Storage, "put_bytes", put_bytes)
    caplog.set_level(logging.WARNING, "worldplay.preview")
    out = run(job_input(pose="w-11"), "upl-1")
    assert "error" not in out, out  # the job and its MP4 are untouched
    assert out["num_frames"] == 45 and storage.stat_size(out["minio_key"]) > 0
    assert out["preview_segments"] == 0
    entries, ended = parse_playlist(playlist(out["preview_url"]))
    assert ended and entries == []
    assert "ended early" in caplog.text and "segment 0" in caplog.text


# ---- switches -----------------------------------------------------------------------------------
def _objects(storage, prefix):
    return [o.object_name for o in storage._client.list_objects(storage.bucket, prefix=prefix,
                                                                recursive=True)]


def test_preview_off_by_request_and_by_env(fake_pipeline, storage, monkeypatch, updates):
    out = run(job_input(pose="w-11", output={"preview": False}), "off-1")
    assert "error" not in out, out
    assert (out["preview_url"], out["preview_key"], out["preview_segments"]) == (None, None, None)
    assert _objects(storage, "worldplay/off-1/") == ["worldplay/off-1/video.mp4"]
    assert not any("preview_url" in p for p in updates)

    monkeypatch.setenv("WORLDPLAY_PREVIEW", "0")
    out = run(job_input(pose="w-11"), "off-2")
    assert "error" not in out and out["preview_url"] is None
    assert _objects(storage, "worldplay/off-2/") == ["worldplay/off-2/video.mp4"]


def x264_options(blob: bytes) -> str:
    """The encoder settings x264 writes into the stream itself (an SEI in the first frame)."""
    found = re.findall(rb"options: ([ -~]+)", blob)
    assert len(found) == 1, found
    return found[0].decode()


def test_mp4_encode_is_unchanged_by_the_preview(fake_pipeline, storage, tmp_path, monkeypatch):
    """Off or on (the default), the MP4 is encoded with exactly the plain writer's settings (the
    x264 options the stream carries): the segments are cut from its packets, nothing is re-encoded.
    Only the low-latency mode changes the encode (an IDR per chunk, no look-ahead): the same
    pictures within CRF's tolerance.

    The bytes themselves are not compared: libx264 (the build PyAV ships) is not bit-reproducible
    from one encode to the next (a rare packet differs, even with one thread, measured on this
    code), so two separate encodes can never be the test of "unchanged"."""
    from pipeline.video import Mp4Writer, ar_chunks

    off = run(job_input(pose="w-11", output={"preview": False}), "mp4-off")
    on = run(job_input(pose="w-11"), "mp4-on")
    monkeypatch.setenv("WORLDPLAY_PREVIEW_LOW_LATENCY", "1")
    fast = run(job_input(pose="w-11"), "mp4-fast")
    assert off.get("preview_segments") is None
    assert on["preview_segments"] == fast["preview_segments"] == 3
    data = {name: storage.get_bytes(o["minio_key"], 2**24)
            for name, o in (("off", off), ("on", on), ("fast", fast))}

    request = fake_pipeline.calls[-1]
    frames = fake_pipeline.generate(request).frames
    plain = tmp_path / "plain.mp4"
    with Mp4Writer(plain, 24) as writer:
        for chunk in ar_chunks(frames):
            writer.write(chunk)
    data["plain"] = plain.read_bytes()

    settings = {name: x264_options(blob) for name, blob in data.items()}
    assert settings["off"] == settings["plain"] == settings["on"]
    assert "bframes=3" in settings["on"] and "rc_lookahead=" in settings["on"]
    # low latency: x264's zerolatency tune (no B-frames, no look-ahead), the rest as configured
    assert settings["fast"] != settings["plain"]
    assert "bframes=0" in settings["fast"] and "mbtree=0" in settings["fast"]
    assert "rc_lookahead=" not in settings["fast"]  # x264 omits it when there is none
    assert re.search(r"crf=(\S+)", settings["fast"])[1] == re.search(r"crf=(\S+)", settings["plain"])[1]

    import av

    for name, blob in data.items():
        (tmp_path / f"{name}.mp4").write_bytes(blob)
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            keys = [round(p.pts * p.time_base * 24) for p in container.demux(video=0)
                    if p.size and p.is_keyframe]
        if name == "fast":  # every chunk starts on an IDR (x264 may add keyframes of its own)
            assert {0, 13, 29} <= set(keys), keys
        else:
            assert keys == [0]
    # the pictures: off and on as close to the source as the plain encode; CRF keeps the quality
    # of the low-latency one (the IDRs cost bytes instead)
    errors = {name: np.abs(decode_rgb(tmp_path / f"{name}.mp4").astype(int) - frames).mean()
              for name in data}
    for name in ("off", "on"):
        assert errors[name] <= errors["plain"] * 1.05 + 0.05, errors
    assert errors["fast"] <= errors["off"] * 1.25 + 0.25, errors


# ---- units -------------------------------------------------------------------------------------
def test_playlist_text():
    text = live_preview.playlist_text([(13 / 24, "http://s/a.ts?x=1"), (16 / 24, "http://s/b.ts")],
                                      ended=False, target=1)
    assert text.splitlines() == [
        "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-TARGETDURATION:1",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXTINF:0.541667,", "http://s/a.ts?x=1", "#EXTINF:0.666667,", "http://s/b.ts"]
    independent = live_preview.playlist_text([(1.0, "u")], ended=False, target=1, independent=True)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in independent.splitlines()
    closed = live_preview.playlist_text([(64 / 24, "u")], ended=True, target=3)
    assert "#EXT-X-TARGETDURATION:3" in closed and closed.endswith("#EXT-X-ENDLIST\n")


def test_target_duration_is_the_longest_chunk_rounded_up():
    assert live_preview.segment_frames("ar") == 16
    assert live_preview.segment_frames("bidirectional") == 64
    assert [live_preview.target_duration(fps, 16) for fps in (24, 16, 15, 8, 5, 1)] == [1, 1, 2, 2, 4, 16]
    assert [live_preview.target_duration(fps, 64) for fps in (60, 24, 5)] == [2, 3, 13]


def test_full_queue_ends_the_preview_instead_of_blocking(storage, monkeypatch, caplog):
    """A store slower than the encoder: segments beyond the bound are dropped and the preview ends
    early (what was queued still goes up, so the listed segments have no gap), and the producer
    (the encoding thread) never waits."""
    release = threading.Event()
    preview = live_preview.LivePreview(storage, "q/job/preview", max_pending=2)
    real_publish = preview._publish
    monkeypatch.setattr(preview, "_publish", lambda seg: (release.wait(WAIT), real_publish(seg)))
    caplog.set_level(logging.WARNING, "worldplay.preview")
    t0 = time.perf_counter()
    for index in range(6):
        preview._segment_made(live_preview.Segment(index, b"\x47" * 188, 16, 16 / 24))
    assert time.perf_counter() - t0 < 0.5
    assert preview.stopped and "waiting for upload" in caplog.text
    release.set()
    preview.finish(WAIT)
    assert preview.wait(0)
    entries, ended = parse_playlist(playlist(preview.link()[0]))
    assert ended and not preview.complete
    assert 2 <= len(entries) <= 3  # 0, 1 (and 2 when the uploader had taken 0 already)
    assert [uri.split("?")[0].rsplit("/", 1)[1] for _, uri in entries] == [
        f"segment{i:05d}.ts" for i in range(len(entries))]


def test_low_latency_lists_a_chunk_before_the_next_one_arrives(fake_pipeline, storage, updates,
                                                               chunks, monkeypatch, tmp_path):
    """WORLDPLAY_PREVIEW_LOW_LATENCY=1 (x264 zerolatency): the first chunk is playable before the
    second is handed over (by default x264's look-ahead holds its last frames until the next)."""
    monkeypatch.setenv("WORLDPLAY_PREVIEW_LOW_LATENCY", "1")
    seen = {}

    def before_second_chunk():
        seen["update"] = updates.wait_for(lambda p: "preview_url" in p)

    chunks.before(1, before_second_chunk)
    out = run(job_input(pose="w-11"), "ll-1")
    assert "error" not in out, out
    assert seen["update"] is not None and seen["update"]["preview_segments"] == 1
    entries, ended = parse_playlist(playlist(out["preview_url"]))
    assert ended and [round(d * 24) for d, _ in entries] == [13, 16, 16]
    frames = decode_segments(entries)
    mp4 = tmp_path / "ll.mp4"
    mp4.write_bytes(storage.get_bytes(out["minio_key"], 2**24))
    assert np.array_equal(frames, decode_rgb(mp4)) and frames.shape[0] == 45


def test_bidirectional_job_gets_a_preview_per_chunk(fake_pipeline, storage, monkeypatch):
    """Bidirectional jobs finish chunks of 16 latents (61 frames, then 64): one segment each."""
    monkeypatch.setenv("WORLDPLAY_MODES", "ar,bidirectional")
    fake_pipeline._modes = ("ar", "bidirectional")
    fake_pipeline.stream = False
    plain_generate = fake_pipeline.generate

    def generate(request, callback=None, should_cancel=None, on_frames=None):
        result = plain_generate(request, callback, should_cancel, on_frames)
        for start, end in ((0, 61), (61, 125)):  # what the bidirectional rollout hands over
            on_frames(result.frames[start:end])
        return result

    monkeypatch.setattr(fake_pipeline, "generate", generate)
    out = run(job_input(pose="w-31", mode="bidirectional"), "bidi-1")
    assert "error" not in out, out
    entries, ended = parse_playlist(playlist(out["preview_url"]))
    assert ended and [round(d * 24) for d, _ in entries] == [61, 64]
    assert "#EXT-X-TARGETDURATION:3" in playlist(out["preview_url"])
    assert decode_segments(entries).shape[0] == out["num_frames"] == 125


def test_first_segment_update_is_not_throttled_away(monkeypatch):
    """The first segment's update goes out inside the throttle window; later counts ride along."""
    sent = []
    clock = {"t": 100.0}
    monkeypatch.setattr(worker_job.time, "monotonic", lambda: clock["t"])
    rep = worker_job.ProgressReporter({"id": "j"}, interval=1.0, enabled=True,
                                      sender=lambda job, payload: sent.append(payload))
    rep.update("denoising", 3, 16)
    clock["t"] = 100.1
    rep.attach(force=True, preview_url="https://s/p.m3u8", preview_segments=1)
    clock["t"] = 100.2
    rep.attach(preview_url="https://s/p.m3u8", preview_segments=2)  # throttled, kept for later
    rep.update("denoising", 4, 16)
    clock["t"] = 101.3
    rep.update("denoising", 5, 16)
    assert sent == [
        {"stage": "denoising", "step": 3, "total": 16},
        {"stage": "denoising", "step": 3, "total": 16, "preview_url": "https://s/p.m3u8",
         "preview_segments": 1},
        {"stage": "denoising", "step": 5, "total": 16, "preview_url": "https://s/p.m3u8",
         "preview_segments": 2},
    ]
