"""Live preview: the video as an HLS stream that grows while the job runs.

The MP4 writer's packet tap (``pipeline.video.Mp4Writer(tap=...)``) hands every encoded H.264
packet to :class:`HlsSegmenter`, which re-muxes them (no second encode) into MPEG-TS segments of
one chunk each, cut as soon as the encoder has let go of the chunk's last frame. By default the
encoder runs with exactly the settings it has without a preview (nothing is re-encoded); segments after the
first then continue the previous one's GOP (valid HLS: a player appends them in order; the playlist
does not claim ``#EXT-X-INDEPENDENT-SEGMENTS``). With ``WORLDPLAY_PREVIEW_LOW_LATENCY=1`` x264 runs
with ``tune=zerolatency`` and an IDR at each chunk start: each segment is ready the moment its chunk
is encoded and plays on its own, for a larger MP4. :class:`LivePreview`
uploads the segments and an EVENT playlist whose segment URIs are presigned (the bucket is
private) under ``{key_prefix}/{job_id}/preview/`` on a background thread fed by a bounded queue.

Rules:
- The preview never fails and never delays the job: segment muxing errors drop the tap, a full
  queue or a failed upload ends the preview early (logged); the job's result does not change.
- Whatever way the job ends (done, failed, cancelled), the playlist gets ``#EXT-X-ENDLIST`` so
  players stop waiting for more.
- Off with ``output.preview: false`` in a request or ``WORLDPLAY_PREVIEW=0`` on the worker.
"""

from __future__ import annotations

import io
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, List, Optional

log = logging.getLogger("worldplay.preview")

PLAYLIST_NAME = "index.m3u8"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
DEFAULT_MAX_PENDING = 8  # segments waiting for upload before the preview gives up
FINISH_TIMEOUT = 2.0  # seconds a finished job waits at most for the last playlist (run in parallel
#                        with the MP4 upload, so normally nothing)
_END = object()


def low_latency() -> bool:
    """``WORLDPLAY_PREVIEW_LOW_LATENCY=1``: x264 ``tune=zerolatency`` and an IDR per chunk while the
    preview is on, so a chunk's segment is complete as soon as the chunk is encoded (default off: the
    MP4 stays exactly what it is without a preview)."""
    from pipeline.settings import env_flag

    return bool(env_flag("WORLDPLAY_PREVIEW_LOW_LATENCY", False))


def writer_options(preview: "Optional[LivePreview]") -> dict:
    """The ``Mp4Writer`` keyword arguments for a job with this preview (none when it is off)."""
    if preview is None:
        return {}
    options = {"tap": preview.tap}
    if preview.independent:
        options.update(keyframe_each_write=True, tune="zerolatency")
    return options


def enabled(req=None) -> bool:
    """``WORLDPLAY_PREVIEW`` (default on) and the request's ``output.preview``."""
    from pipeline.settings import env_flag

    if not env_flag("WORLDPLAY_PREVIEW", True):
        return False
    output = getattr(req, "output", None)
    return bool(getattr(output, "preview", True))


@dataclass(frozen=True)
class Segment:
    index: int
    data: bytes
    num_frames: int
    duration: float


class HlsSegmenter:
    """A packet tap for ``Mp4Writer``: copies each packet and cuts an MPEG-TS segment at every chunk
    boundary, once as many packets came out as frames went in up to that boundary (packets are in
    decode order, one per frame), and at the end; ``on_segment(Segment)`` is called on the
    encoding thread."""

    def __init__(self, on_segment: Callable[[Segment], None]):
        self.on_segment = on_segment
        self._template = None
        self._pending: List[tuple] = []  # (data, pts, dts, keyframe) in the encoder's time base
        self._boundaries: List[int] = []  # frames fed to the encoder at each chunk's end, not yet cut
        self._time_base: Optional[Fraction] = None
        self._offset: Optional[int] = None  # shifts the first dts (negative with B-frames) to 0
        self.segments = 0
        self.frames = 0

    # -- the Mp4Writer tap protocol ------------------------------------------------------------
    def stream_opened(self, stream) -> None:
        self._template = stream

    def packet(self, packet) -> None:
        if packet.size == 0:
            return
        if self._time_base is None:
            self._time_base = packet.time_base
            self._offset = -min(0, packet.dts if packet.dts is not None else 0)
        self._pending.append((bytes(packet), packet.pts, packet.dts, bool(packet.is_keyframe)))
        self._cut_complete_chunks()

    def chunk_encoded(self, frames_in: int) -> None:
        """A chunk went into the encoder: its segment is cut once the encoder has let go of all
        ``frames_in`` frames (at once for an encoder without frame delay)."""
        self._boundaries.append(frames_in)
        self._cut_complete_chunks()

    def finished(self) -> None:
        if self._pending:
            self._cut()

    # -- internals -------------------------------------------------------------------------------
    def _cut_complete_chunks(self) -> None:
        while self._boundaries and self.frames + len(self._pending) >= self._boundaries[0]:
            if self.frames + len(self._pending) == self._boundaries.pop(0) and self._pending:
                self._cut()

    def _cut(self) -> None:
        import av

        pending, self._pending = self._pending, []
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mpegts") as out:
            stream = out.add_stream_from_template(self._template)
            for data, pts, dts, key in pending:
                pkt = av.Packet(data)
                pkt.pts = None if pts is None else pts + self._offset
                pkt.dts = None if dts is None else dts + self._offset
                pkt.time_base = self._time_base
                pkt.is_keyframe = key
                pkt.stream = stream
                out.mux(pkt)
        count = len(pending)
        segment = Segment(self.segments, buf.getvalue(), count, float(count * self._frame_duration))
        self.segments += 1
        self.frames += count
        self.on_segment(segment)

    @property
    def _frame_duration(self) -> Fraction:
        template = self._template
        rate = getattr(template, "average_rate", None) or getattr(template, "rate", None)
        return 1 / Fraction(rate) if rate else Fraction(self._time_base)


def playlist_text(entries: List[tuple], *, ended: bool, independent: bool = False) -> str:
    """An HLS EVENT playlist: ``entries`` are (duration seconds, uri); ``independent`` when every
    segment starts with an IDR frame."""
    target = max([1] + [math.ceil(round(d, 3)) for d, _ in entries])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
             f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0"]
    if independent:
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for duration, uri in entries:
        lines += [f"#EXTINF:{duration:.6f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


class LivePreview:
    """Uploads segments and the growing playlist in the background.

    ``tap`` goes to ``Mp4Writer(**writer_options(preview))``; ``on_ready(segments)`` is
    called (uploader thread) after each playlist update that added a segment; ``end()`` (any time,
    idempotent) closes the playlist with ``#EXT-X-ENDLIST`` once what is queued is uploaded;
    ``wait(timeout)`` waits for that.
    """

    def __init__(self, storage, prefix: str, *, expiry: int = 3600,
                 on_ready: Optional[Callable[[int], None]] = None,
                 max_pending: int = DEFAULT_MAX_PENDING, independent: Optional[bool] = None):
        from worker.storage import RetryPolicy

        # segments that each start with an IDR (low-latency mode) or continue the MP4's own GOPs
        self.independent = low_latency() if independent is None else bool(independent)
        # few, short retries: a slow store ends the preview instead of stretching it
        self.storage = storage.with_retry(RetryPolicy(attempts=2, initial=0.2, maximum=1.0))
        self.prefix = prefix.rstrip("/")
        self.expiry = int(expiry)
        self.on_ready = on_ready
        self.max_pending = max(1, int(max_pending))
        self.playlist_key = f"{self.prefix}/{PLAYLIST_NAME}"
        self.playlist_url, _ = self.storage.presigned_get(self.playlist_key, self.expiry)
        self.segments = 0  # uploaded and listed
        self.frames = 0
        self.complete = False  # the playlist was closed with every segment the encoder made
        self.stopped: Optional[str] = None  # why it ended early
        self.first_segment_at: Optional[float] = None  # perf_counter of the first listing
        self._entries: List[tuple] = []
        self._queue: "queue.Queue" = queue.Queue()
        self._ended = False
        self._failed = False  # an upload failed: nothing more is published
        self._done = threading.Event()
        self.tap = HlsSegmenter(self._segment_made)
        self._thread = threading.Thread(target=self._run, name="hls-preview", daemon=True)
        self._thread.start()

    # -- producer side (encoding thread / job thread) --------------------------------------------
    def _segment_made(self, segment: Segment) -> None:
        if self.stopped or self._ended:
            return
        if self._queue.qsize() >= self.max_pending:  # never block the encoder
            self._stop(f"{self._queue.qsize()} segments waiting for upload")
            return
        self._queue.put(segment)

    def end(self) -> None:
        """No more segments: close the playlist after what is queued (idempotent)."""
        if not self._ended:
            self._ended = True
            self._queue.put(_END)

    def wait(self, timeout: float = FINISH_TIMEOUT) -> bool:
        return self._done.wait(timeout)

    def result(self) -> dict:
        """The fields a job's output carries."""
        return {"preview_key": self.playlist_key, "preview_url": self.playlist_url,
                "preview_segments": self.segments}

    # -- uploader thread ---------------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            log.warning("live preview %s ended early: %s", self.playlist_key, reason)

    def _run(self) -> None:
        closed = False
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                if not self._failed:  # after a full queue, what was queued still goes up
                    try:
                        self._publish(item)
                    except Exception as exc:  # noqa: BLE001 - the preview never fails the job
                        self._failed = True
                        self._stop(f"segment {item.index}: {_describe(exc)}")
                if self.stopped and not closed and self._queue.empty():
                    closed = self._close_playlist()  # ended early: players stop waiting now
            if not closed:
                closed = self._close_playlist()
            self.complete = closed and self.stopped is None
        finally:
            self._done.set()

    def _publish(self, segment: Segment) -> None:
        key = f"{self.prefix}/segment{segment.index:05d}.ts"
        self.storage.put_bytes(key, segment.data, content_type=SEGMENT_TYPE)
        url, _ = self.storage.presigned_get(key, self.expiry)
        self._entries.append((segment.duration, url))
        self._put_playlist(ended=False)
        self.segments += 1
        self.frames += segment.num_frames
        if self.first_segment_at is None:
            self.first_segment_at = time.perf_counter()
        if self.on_ready is not None:
            try:
                self.on_ready(self.segments)
            except Exception:  # noqa: BLE001
                log.debug("preview on_ready callback failed", exc_info=True)

    def _close_playlist(self) -> bool:
        try:
            self._put_playlist(ended=True)
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("live preview %s: could not close the playlist: %s", self.playlist_key,
                        _describe(exc))
            return False

    def _put_playlist(self, *, ended: bool) -> None:
        text = playlist_text(self._entries, ended=ended, independent=self.independent)
        self.storage.put_bytes(self.playlist_key, text.encode("utf-8"), content_type=PLAYLIST_TYPE,
                               headers={"Cache-Control": "no-store"})


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if code and message:
        return f"{code}: {message}"
    return type(exc).__name__


def start(req, job_id: str, storage_getter: Callable, progress=None) -> Optional[LivePreview]:
    """A LivePreview for this job, or None when it is off or storage is not usable (logged)."""
    if not enabled(req):
        return None
    try:
        storage = storage_getter()
        if storage is None:
            return None
        prefix = f"{req.output.key_prefix}/{job_id}/preview"
        preview = LivePreview(storage, prefix, expiry=req.output.presign_expiry_seconds)
        if progress is not None:
            def on_ready(segments: int) -> None:
                # the first segment is news a polling client must get: never throttled away
                progress.attach(force=segments == 1, preview_url=preview.playlist_url,
                                preview_segments=segments)

            preview.on_ready = on_ready
        return preview
    except Exception as exc:  # noqa: BLE001 - the job itself reports storage problems later
        log.info("live preview off for job %s: %s", job_id, _describe(exc))
        return None
