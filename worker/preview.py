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
  queue or a failed upload ends the preview early (logged); the job's result does not change. The
  job waits for it once, at most ``FINISH_TIMEOUT``.
- ``#EXT-X-TARGETDURATION`` is fixed before the first playlist (the longest chunk at the job's fps,
  rounded up; no segment is cut longer) and never changes (RFC 8216 §6.2.1).
- URLs never go stale while they are handed out: the playlist URL is signed afresh for each
  progress update and for the output (``preview_expires_at`` says until when it plays); listed
  segment URIs are signed again once half their lifetime is gone, and all of them when a done job's
  playlist is final, so they stay valid ``presign_expiry_seconds`` after the job.
- A done job's playlist gets ``#EXT-X-ENDLIST``. A failed or cancelled job's preview objects are
  removed (playlist and segments), unless ``WORLDPLAY_PREVIEW_KEEP_FAILED=1``: then its playlist is
  closed with ``#EXT-X-ENDLIST`` and kept, so players stop waiting for more.
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
FINISH_TIMEOUT = 2.0  # seconds a job waits at most for the last playlist or the removal (the last
#                        segments go up in parallel with the MP4 upload, so normally nothing is left)


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

    def __init__(self, on_segment: Callable[[Segment], None], max_frames: Optional[int] = None):
        self.on_segment = on_segment
        # no segment longer than this (the playlist's fixed target duration rests on it): a chunk
        # longer than a rollout's chunk (a pipeline that hands over all frames at once) is split
        self.max_frames = max_frames
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
        if self.max_frames and len(self._pending) >= self.max_frames:
            self._cut()

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


def target_duration(fps: float, segment_frames: int) -> int:
    """``#EXT-X-TARGETDURATION`` for segments of at most ``segment_frames`` frames at ``fps``: the
    longest segment's duration rounded up (RFC 8216 §4.3.3.1), fixed before the first playlist."""
    return max(1, math.ceil(Fraction(int(segment_frames)) / Fraction(fps)))


def segment_frames(mode: str) -> int:
    """Frames of the longest chunk a rollout in ``mode`` hands over (AR 4 latents = 16 frames,
    bidirectional 16 latents = 64; the first chunk, with the start frame, is 3 shorter)."""
    from pipeline.generation.rollout import AR_CHUNK_LATENTS, BIDIRECTIONAL_CHUNK_LATENTS
    from pipeline.limits import FRAMES_PER_LATENT

    latents = BIDIRECTIONAL_CHUNK_LATENTS if mode == "bidirectional" else AR_CHUNK_LATENTS
    return FRAMES_PER_LATENT * latents


def playlist_text(entries: List[tuple], *, ended: bool, target: int, independent: bool = False) -> str:
    """An HLS EVENT playlist: ``entries`` are (duration seconds, uri); ``target`` the fixed
    ``#EXT-X-TARGETDURATION`` (:func:`target_duration`); ``independent`` when every segment starts
    with an IDR frame."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
             f"#EXT-X-TARGETDURATION:{int(target)}", "#EXT-X-MEDIA-SEQUENCE:0"]
    if independent:
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for duration, uri in entries:
        lines += [f"#EXTINF:{duration:.6f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def keep_failed() -> bool:
    """``WORLDPLAY_PREVIEW_KEEP_FAILED=1``: a failed or cancelled job keeps its preview objects
    (default: they are removed, like the rest of what the job would have stored)."""
    from pipeline.settings import env_flag

    return bool(env_flag("WORLDPLAY_PREVIEW_KEEP_FAILED", False))


@dataclass(frozen=True)
class _Entry:
    """A listed segment: its presigned URI, when that was signed and when it expires."""

    duration: float
    key: str
    uri: str
    signed_at: float  # time.time()
    expires_at: str  # ISO-8601 UTC, as Storage.presigned_get gives it


# commands for the uploader thread, queued behind the segments
_END = object()  # no more segments: close the playlist (#EXT-X-ENDLIST)
_RESIGN = object()  # the job is done: rewrite the closed playlist with freshly signed segment URIs
_DISCARD = object()  # the job failed: remove every object the preview wrote
_EXIT = object()  # nothing more will come
FRESH_SECONDS = 1.0  # a signature at most this old counts as fresh (X-Amz-Date has whole seconds)


class LivePreview:
    """Uploads segments and the growing playlist in the background.

    ``tap`` goes to ``Mp4Writer(**writer_options(preview))``; ``on_ready(segments)`` is called
    (uploader thread) after each playlist update that added a segment. The job ends it one of two
    ways, each waiting at most once: :meth:`finish` (done: the playlist is closed and its segment
    URIs signed afresh, valid for ``expiry`` seconds from then) or :meth:`discard` (failed or
    cancelled: its objects are removed, unless ``WORLDPLAY_PREVIEW_KEEP_FAILED=1``, when the playlist
    is only closed) followed by :meth:`close`.

    URLs: the playlist URL is signed afresh on every call of :meth:`link` (each progress update, the
    output); segment URIs are signed when uploaded and signed again whenever the playlist is written
    (and at least every ``expiry / 4`` seconds while a job runs) once half their lifetime has passed,
    so the listed URIs never go stale while the preview lives.
    """

    def __init__(self, storage, prefix: str, *, expiry: int = 3600, fps: float = 24,
                 segment_frames: int = 16, on_ready: Optional[Callable[[int], None]] = None,
                 max_pending: int = DEFAULT_MAX_PENDING, independent: Optional[bool] = None):
        from worker.storage import RetryPolicy

        # segments that each start with an IDR (low-latency mode) or continue the MP4's own GOPs
        self.independent = low_latency() if independent is None else bool(independent)
        # few, short retries: a slow store ends the preview instead of stretching it
        self.storage = storage.with_retry(RetryPolicy(attempts=2, initial=0.2, maximum=1.0))
        self.prefix = prefix.rstrip("/")
        self.expiry = int(expiry)
        self.target = target_duration(fps, segment_frames)  # never changes (RFC 8216 §6.2.1)
        self.on_ready = on_ready
        self.max_pending = max(1, int(max_pending))
        self.playlist_key = f"{self.prefix}/{PLAYLIST_NAME}"
        self.link()  # signing works (expiry in range, region known) before anything is uploaded
        self.segments = 0  # uploaded and listed
        self.frames = 0
        self.complete = False  # the playlist was closed with every segment the encoder made
        self.removed = False  # a failed job's objects were removed
        self.stopped: Optional[str] = None  # why it ended early
        self.first_segment_at: Optional[float] = None  # perf_counter of the first listing
        self._entries: List[_Entry] = []  # what the stored playlist lists (replaced, never mutated)
        self._keys: List[str] = []  # every key a PUT was tried for: what discard removes
        self._queue: "queue.Queue" = queue.Queue()
        self._ended = False
        self._exiting = False
        self._waited = False
        self._discarding = False  # set by discard(): nothing more is uploaded
        self._closed = False  # the stored playlist carries #EXT-X-ENDLIST
        self._failed = False  # an upload failed: nothing more is published
        self._done = threading.Event()
        self.tap = HlsSegmenter(self._segment_made, max_frames=int(segment_frames))
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
        """Wait for the uploader thread to end (only after :meth:`finish`, :meth:`discard` or
        :meth:`close` told it nothing more comes)."""
        return self._done.wait(timeout)

    def finish(self, timeout: float = FINISH_TIMEOUT) -> dict:
        """The job is done: close the playlist, sign its segment URIs afresh, wait (once, at most
        ``timeout``) and return the output's fields."""
        self.end()
        if not self._exiting:
            self._queue.put(_RESIGN)
        self._exit()
        if not self._wait_once(timeout):
            log.warning("live preview %s still uploading after %.1f s; not waiting for it",
                        self.playlist_key, timeout)
        return self.result()

    def discard(self) -> None:
        """The job failed or was cancelled: nothing more is uploaded and what was is removed in the
        background (with ``WORLDPLAY_PREVIEW_KEEP_FAILED=1`` the playlist is closed and kept).
        :meth:`close` waits for it."""
        if keep_failed():
            self.end()
            return
        self._discarding = True
        self.end()
        if not self._exiting:
            self._queue.put(_DISCARD)
            return
        # finish() ran already (the job failed after it): the thread is done, or ends at once
        self._done.wait(FINISH_TIMEOUT)
        self._remove_objects()

    def close(self, timeout: float = FINISH_TIMEOUT) -> bool:
        """However the job ended: the uploader gets its last command, and the job waits for it,
        unless :meth:`finish` waited already. True when the thread is done."""
        self.end()
        self._exit()
        return self._wait_once(timeout)

    def _exit(self) -> None:
        if not self._exiting:
            self._exiting = True
            self._queue.put(_EXIT)

    def _wait_once(self, timeout: float) -> bool:
        if self._waited:
            return self._done.is_set()
        self._waited = True
        return self._done.wait(timeout)

    # -- links --------------------------------------------------------------------------------------
    def link(self) -> tuple:
        """(URL, expires_at) of the playlist, signed now for ``expiry`` seconds."""
        return self.storage.presigned_get(self.playlist_key, self.expiry)

    def expires_at(self, url_expires_at: str) -> str:
        """When a playlist URL expiring at ``url_expires_at`` stops playing once the uploader is done:
        then, or earlier when a segment URI the stored playlist lists expires first (ISO-8601 UTC).
        While the job runs the uploader keeps those URIs fresh, so there it is the URL's expiry."""
        return min([url_expires_at] + [e.expires_at for e in self._entries])

    def progress_fields(self) -> dict:
        """What each progress update carries once a segment is listed: a freshly signed playlist
        URL, its expiry and the segment count."""
        if not self.segments:
            return {}
        url, url_expires = self.link()
        return {"preview_url": url, "preview_expires_at": url_expires,
                "preview_segments": self.segments}

    def result(self) -> dict:
        """The fields a job's output carries (the playlist URL signed now; the expiry also counts
        the segment URIs listed, signed afresh by :meth:`finish` unless the store was too slow)."""
        try:
            url, url_expires = self.link()
            expires = self.expires_at(url_expires)
        except Exception as exc:  # noqa: BLE001 - the preview never fails the job
            log.warning("live preview %s: could not sign its URL: %s", self.playlist_key, _describe(exc))
            url = expires = None
        return {"preview_key": self.playlist_key, "preview_url": url, "preview_expires_at": expires,
                "preview_segments": self.segments}

    # -- uploader thread ---------------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            log.warning("live preview %s ended early: %s", self.playlist_key, reason)

    def _run(self) -> None:
        refresh = max(1.0, self.expiry / 4)
        try:
            while True:
                try:
                    item = self._queue.get(timeout=refresh)
                except queue.Empty:  # a long wait between chunks: keep the listed URIs valid
                    if not (self._failed or self._discarding):
                        self._refresh(older_than=self.expiry / 2)
                    continue
                if item is _EXIT:
                    break
                if item is _END:
                    if not self._closed and not self._discarding:
                        self._close_playlist()
                elif item is _RESIGN:
                    if self._closed and not self._discarding:
                        self._refresh(older_than=FRESH_SECONDS)
                elif item is _DISCARD:
                    self._remove_objects()
                elif not (self._failed or self._discarding or self._closed):
                    try:  # after a full queue, what was queued still goes up
                        self._publish(item)
                    except Exception as exc:  # noqa: BLE001 - the preview never fails the job
                        self._failed = True
                        self._stop(f"segment {item.index}: {_describe(exc)}")
                if (self.stopped and not self._closed and not self._discarding
                        and self._queue.empty()):
                    self._close_playlist()  # ended early: players stop waiting now
        finally:
            self.complete = self._closed and self.stopped is None and not self.removed
            self._done.set()

    def _publish(self, segment: Segment) -> None:
        key = f"{self.prefix}/segment{segment.index:05d}.ts"
        self._keys.append(key)
        self.storage.put_bytes(key, segment.data, content_type=SEGMENT_TYPE)
        self._write_playlist(older_than=self.expiry / 2, add=(segment.duration, key))
        self.segments = len(self._entries)
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
            self._closed = True  # from now on every write carries #EXT-X-ENDLIST
            self._write_playlist(older_than=0, force=True)  # every URI signed now
            return True
        except Exception as exc:  # noqa: BLE001
            self._closed = False
            log.warning("live preview %s: could not close the playlist: %s", self.playlist_key,
                        _describe(exc))
            return False

    def _refresh(self, *, older_than: float) -> None:
        """Rewrite the playlist when a listed URI was signed more than ``older_than`` seconds ago; a
        failure is logged (the stored listing stays as it was)."""
        try:
            self._write_playlist(older_than=older_than)
        except Exception as exc:  # noqa: BLE001
            log.warning("live preview %s: could not refresh the playlist: %s", self.playlist_key,
                        _describe(exc))

    def _write_playlist(self, *, older_than: float, add: Optional[tuple] = None,
                        force: bool = False) -> None:
        """Store the playlist (with ``add`` = (duration, key) listed last), every segment URI signed
        more than ``older_than`` seconds ago signed again; nothing is written when nothing changed
        and not ``force``. The new listing counts once it is stored."""
        now = time.time()
        entries = [self._sign(e.duration, e.key, now) if now - e.signed_at > older_than else e
                   for e in self._entries]
        if add is not None:
            entries.append(self._sign(*add, now))
        if entries == self._entries and not force:
            return
        text = playlist_text([(e.duration, e.uri) for e in entries], ended=self._closed,
                             target=self.target, independent=self.independent)
        if self.playlist_key not in self._keys:
            self._keys.append(self.playlist_key)
        self.storage.put_bytes(self.playlist_key, text.encode("utf-8"), content_type=PLAYLIST_TYPE,
                               headers={"Cache-Control": "no-store"})
        self._entries = entries

    def _sign(self, duration: float, key: str, now: float) -> _Entry:
        uri, expires_at = self.storage.presigned_get(key, self.expiry)
        return _Entry(duration, key, uri, now, expires_at)

    def _remove_objects(self) -> None:
        """Remove what the preview stored (a failed or cancelled job)."""
        self._discarding = True
        if not self._keys:
            return
        try:
            count = self.storage.remove_objects(self._keys)
        except Exception as exc:  # noqa: BLE001 - the job's own error is what the client gets
            log.warning("live preview %s: could not remove its objects: %s", self.playlist_key,
                        _describe(exc))
            return
        self.removed = True
        self._entries = []
        log.info("live preview %s removed (%d objects)", self.playlist_key, count)


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if code and message:
        return f"{code}: {message}"
    return type(exc).__name__


def start(req, job_id: str, storage_getter: Callable, progress=None) -> Optional[LivePreview]:
    """A LivePreview for this job, or None when it is off or storage is not usable (logged). With
    ``progress``, every update from the first listed segment on carries the freshly signed
    ``preview_url``, ``preview_expires_at`` and ``preview_segments``; the first one is sent at once."""
    if not enabled(req):
        return None
    try:
        storage = storage_getter()
        if storage is None:
            return None
        prefix = f"{req.output.key_prefix}/{job_id}/preview"
        preview = LivePreview(storage, prefix, expiry=req.output.presign_expiry_seconds,
                              fps=req.fps,
                              # a redecode hands over AR-sized chunks (4 latents)
                              segment_frames=segment_frames(getattr(req, "rollout", "ar")))
        if progress is not None:
            progress.attach_source(preview.progress_fields)

            def on_ready(segments: int) -> None:
                # the first segment is news a polling client must get: never throttled away
                if segments == 1:
                    progress.attach(force=True)

            preview.on_ready = on_ready
        return preview
    except Exception as exc:  # noqa: BLE001 - the job itself reports storage problems later
        log.info("live preview off for job %s: %s", job_id, _describe(exc))
        return None


# run_job's three calls, each a no-op without a preview
def finish(preview: Optional[LivePreview]) -> dict:
    """A done job's output fields (waits once, at most FINISH_TIMEOUT, for the last playlist)."""
    return preview.finish() if preview is not None else {}


def discard(preview: Optional[LivePreview]) -> None:
    """A failed or cancelled job: its preview objects go (WORLDPLAY_PREVIEW_KEEP_FAILED=1 keeps them)."""
    if preview is not None:
        preview.discard()


def close(preview: Optional[LivePreview]) -> None:
    """However the job ended (its ``finally``): the uploader is told nothing more comes; waits at
    most FINISH_TIMEOUT unless :func:`finish` waited already."""
    if preview is not None:
        preview.close()
