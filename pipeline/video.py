"""H.264 MP4 encoding and probing with PyAV.

``encode_mp4`` writes a whole clip at once; ``Mp4Writer`` is the incremental form (open once,
``write(chunk)`` many times, ``close()``), optionally encoding on a background thread so a rollout
can hand over finished chunks while the next chunk denoises. ``probe_mp4`` reads back what a file
really contains (codec, size, rate, exact frame count, pixel format, duration).

Decisions:
- H.264 (libx264), yuv420p, ``movflags=+faststart`` (the ``moov`` atom is moved in front of
  ``mdat`` so players can start before the download ends).
- yuv420p needs even width and height. Odd sizes are padded by one edge-replicated row/column
  (never rejected: the model's own sizes are even, and a padded pixel is invisible); the returned
  ``VideoInfo`` reports the encoded size.
- RGB -> YUV 4:2:0 conversion runs in OpenCV (BT.601, limited range, as swscale would do) which is
  several times faster than going through swscale per frame; the stream is tagged accordingly.
- Default preset ``veryfast`` at CRF 18: see docs/PERFORMANCE.md / README for the measurement
  (`python -m pipeline.video --bench`).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 18
MAX_FPS = 240

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    fps: float
    num_frames: int
    pix_fmt: str
    duration: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_fps(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise ValueError(f"fps must be a number, got {type(fps).__name__}")
    if not (0 < float(fps) <= MAX_FPS):
        raise ValueError(f"fps must be in (0, {MAX_FPS}], got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {list(frames.shape)}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"frames are too small to encode: {frames.shape[2]}x{frames.shape[1]}")
    return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1], frames.shape[2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _rgb_to_i420(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> planar I420 [H*3/2, W] (BT.601 limited range)."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420)


class Mp4Writer:
    """Incremental H.264 MP4 writer.

    >>> with Mp4Writer("out.mp4", fps=24) as w:      # doctest: +SKIP
    ...     w.write(chunk0); w.write(chunk1)
    >>> info = w.info

    ``tap`` (optional) sees the encoded stream as it is muxed: ``tap.stream_opened(stream)`` once,
    ``tap.packet(packet)`` for each packet before it goes into the MP4 (copy what you keep) and
    ``tap.chunk_encoded(frames_so_far)`` after each ``write``'s frames went into the encoder and
    ``tap.finished()`` after the encoder is drained on ``close`` (not on ``abort``). It runs on the
    encoding thread; if it raises, it is logged and dropped and the MP4 goes on.
    ``keyframe_each_write=True`` starts every ``write`` with an IDR frame (x264 ``forced-idr``) so
    each chunk can be played on its own; without it the encoder settings are the plain ones.

    ``background=True`` moves colour conversion and encoding to one worker thread fed by a bounded
    queue (``write`` returns at once unless ``max_pending`` chunks are waiting); errors from the
    thread surface on the next ``write`` or on ``close``. Frames handed to ``write`` must not be
    modified afterwards.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float = 24,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        threads: int = 0,
        background: bool = False,
        max_pending: int = 4,
        tap=None,
        keyframe_each_write: bool = False,
        tune: Optional[str] = None,
    ):
        self.path = Path(path)
        self.fps = _check_fps(fps)
        if not (0 <= int(crf) <= 51):
            raise ValueError(f"crf must be in 0..51, got {crf}")
        self.crf = int(crf)
        self.preset = str(preset)
        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        self._container = None
        self._file = None  # the open output file: ours, so it is closed even if FFmpeg fails
        self._stream = None
        self._size: Optional[tuple] = None  # (width, height) as encoded
        self._src_size: Optional[tuple] = None
        self._count = 0
        self._closed = False
        self._info: Optional[VideoInfo] = None
        self._error: Optional[BaseException] = None
        self._aborted = False
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self.encode_seconds = 0.0
        # packet tap (live preview, see above); keyframe_each_write makes every write() start a
        # closed GOP (an IDR frame), so the tap can cut independent segments at chunk boundaries
        self._tap = tap
        self.keyframe_each_write = bool(keyframe_each_write)
        self.tune = tune  # x264 --tune (e.g. "zerolatency": no frame delay, a larger file)
        if background:
            self._queue = queue.Queue(maxsize=max(1, int(max_pending)))
            self._thread = threading.Thread(target=self._drain, name="mp4-writer", daemon=True)
            self._thread.start()

    # -- public API ---------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def info(self) -> Optional[VideoInfo]:
        return self._info

    def write(self, frames: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError("Mp4Writer is closed")
        self._raise_pending()
        frames = _check_frames(frames)
        size = (frames.shape[2], frames.shape[1])
        if self._src_size is None:
            self._src_size = size
        elif size != self._src_size:
            raise ValueError(
                f"frame size changed from {self._src_size[0]}x{self._src_size[1]} "
                f"to {size[0]}x{size[1]}"
            )
        if self._queue is not None:
            self._queue.put(frames)
        else:
            self._encode(frames)

    def close(self) -> VideoInfo:
        if self._closed:
            if self._info is None:
                raise RuntimeError("Mp4Writer was closed after an error")
            return self._info
        self._closed = True
        try:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
            self._raise_pending()
            if self._count == 0:
                raise ValueError("no frames were written")
            t0 = time.perf_counter()
            for packet in self._stream.encode(None):
                self._mux(packet)
            self._tap_call("finished")
            self._container.close()
            self._container = None
            self._file.close()
            self._file = None
            self.encode_seconds += time.perf_counter() - t0
        except BaseException:
            self.abort()
            raise
        w, h = self._size
        self._info = VideoInfo(
            codec="h264",
            width=w,
            height=h,
            fps=float(self.fps),
            num_frames=self._count,
            pix_fmt="yuv420p",
            duration=self._count / float(self.fps),
        )
        return self._info

    def abort(self) -> None:
        """Stop without finalising; removes the partial file. Chunks still queued are dropped; the
        background thread finishes the one it is encoding and ends before the container closes."""
        self._closed = True
        self._aborted = True
        if self._thread is not None:
            while True:  # drop what is queued, then make room for the stop marker
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None)
            self._thread.join()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort on an already failing path
                pass
            self._container = None
        if self._file is not None:
            # PyAV leaves its own file handle open when the header write fails (disk full), so the
            # writer opens the file itself and always closes it here.
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------------------------
    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None or self._aborted:
                continue  # keep draining so producers never block forever
            try:
                self._encode(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc

    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # w+b: +faststart reads the file back to move the index in front
        self._file = open(self.path, "w+b", buffering=0)  # AVIO buffers; a raw file never re-fails
        container = av.open(self._file, mode="w", format="mp4",
                            options={"movflags": "+faststart"})
        try:
            stream = container.add_stream("libx264", rate=self.fps)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.color_range = 1  # MPEG / limited range
            stream.options = {
                "crf": str(self.crf),
                "preset": self.preset,
                "threads": str(self.threads),
                # BT.601 tags matching the OpenCV conversion
                "x264-params": "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m",
            }
            if self.keyframe_each_write:
                stream.options = {**stream.options, "forced-idr": "1"}
            if self.tune:
                stream.options = {**stream.options, "tune": str(self.tune)}
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._frame_tb = 1 / self.fps
        self._size = (width, height)
        self._tap_call("stream_opened", stream)

    def _tap_call(self, method: str, *args) -> None:
        """Hand something to the tap; a failing tap is dropped (it must never cost the MP4)."""
        if self._tap is None:
            return
        try:
            getattr(self._tap, method)(*args)
        except Exception:  # noqa: BLE001
            logging.getLogger("worldplay.video").warning("packet tap %s failed; tap removed",
                                                         method, exc_info=True)
            self._tap = None

    def _mux(self, packet) -> None:
        if self._tap is not None:  # before mux: muxing hands the packet's data to the container
            self._tap_call("packet", packet)
        self._container.mux(packet)

    def _encode(self, frames: np.ndarray) -> None:
        import av

        t0 = time.perf_counter()
        frames = _pad_even(frames)
        if self._container is None:
            self._open(frames.shape[2], frames.shape[1])
        for index, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(_rgb_to_i420(frame), format="yuv420p")
            vf.pts = self._count
            vf.time_base = self._frame_tb
            if index == 0 and self.keyframe_each_write:
                vf.pict_type = av.video.frame.PictureType.I  # an IDR with forced-idr=1
            for packet in self._stream.encode(vf):
                self._mux(packet)
            self._count += 1
        self._tap_call("chunk_encoded", self._count)
        self.encode_seconds += time.perf_counter() - t0


# ---- fragmented MP4 for MediaSource (live worlds) -----------------------------------------------
LIVE_PRESET = "veryfast"
LIVE_CRF = 20
LIVE_MAX_KBPS = 3600  # x264 VBV cap: 832x480 at 24 fps stays under 4 Mbit/s whatever the content


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, bytes([version]) + flags.to_bytes(3, "big"), *parts)


def _u(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "big")


def annexb_nal_units(data: bytes) -> list:
    """The NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01 removed)."""
    units, i, n = [], 0, len(data)
    starts = []
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        unit = data[start:end]
        if k + 1 < len(starts):
            unit = unit.rstrip(b"\x00") if unit.endswith(b"\x00") else unit  # 4-byte start code
        if unit:
            units.append(unit)
    return units


def avc_codecs_string(sps: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` from an SPS NAL unit (profile_idc, constraint flags, level_idc)."""
    return "avc1." + sps[1:4].hex()


def _matrix() -> bytes:
    return b"".join(_u(v, 4) for v in (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000))


class FragmentedMp4Encoder:
    """H.264 (libx264) to fragmented MP4 in memory, for MediaSource players: an init segment
    (``ftyp`` + ``moov``, available at once) and one ``moof`` + ``mdat`` fragment per
    :meth:`encode_chunk` call, each starting with an IDR frame, so each chunk plays as soon as it
    arrives. x264 runs with ``tune=zerolatency`` (no look-ahead, no B-frames: a chunk's packets come
    out while its frames go in) and a VBV cap (``max_kbps``). The init segment followed by every
    fragment, in order, is itself a valid MP4 (the session recording).

    The boxes are written here rather than by FFmpeg's mp4 muxer because its fragments are only cut
    when the *next* keyframe arrives (PyAV cannot ask the muxer to flush one), i.e. a chunk late.
    """

    def __init__(self, width: int, height: int, fps: float = 24, *, crf: int = LIVE_CRF,
                 preset: str = LIVE_PRESET, max_kbps: Optional[int] = LIVE_MAX_KBPS,
                 threads: int = 0):
        import av

        self.fps = _check_fps(fps)
        self.width, self.height = int(width) + int(width) % 2, int(height) + int(height) % 2
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = self.width, self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.fps
        ctx.framerate = self.fps
        ctx.color_range = 1
        ctx.flags |= av.codec.context.Flags.global_header  # SPS/PPS in extradata, known before any frame
        params = "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m"
        if max_kbps:
            params += f":vbv-maxrate={int(max_kbps)}:vbv-bufsize={int(max_kbps)}"
        ctx.options = {"crf": str(int(crf)), "preset": str(preset), "tune": "zerolatency",
                       "forced-idr": "1", "threads": str(int(threads) if threads else (os.cpu_count() or 1)),
                       "x264-params": params}
        ctx.open()
        self._ctx = ctx
        units = annexb_nal_units(bytes(ctx.extradata or b""))
        sps = next((u for u in units if u[0] & 0x1F == 7), None)
        pps = next((u for u in units if u[0] & 0x1F == 8), None)
        if sps is None or pps is None:
            raise RuntimeError("libx264 gave no SPS/PPS in its global header")
        self.codecs = avc_codecs_string(sps)
        self.mime = f'video/mp4; codecs="{self.codecs}"'
        fps_frac = Fraction(self.fps)
        self.timescale = 90000 if (90000 * fps_frac.denominator) % fps_frac.numerator == 0 \
            else fps_frac.numerator * 1000
        self.sample_duration = self.timescale * fps_frac.denominator // fps_frac.numerator
        self.init_segment = self._init_segment(sps, pps)
        self._sequence = 0
        self._count = 0  # frames in
        self._pending: list = []  # packets out of the encoder not yet in a fragment
        self.bytes_out = len(self.init_segment)
        self.frames_out = 0
        self.encode_seconds = 0.0
        self._closed = False

    @property
    def num_frames(self) -> int:
        return self._count

    def _init_segment(self, sps: bytes, pps: bytes) -> bytes:
        avcc = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + _u(len(sps), 2) + sps + b"\x01" + \
            _u(len(pps), 2) + pps
        if sps[1] not in (66, 77, 88):  # High profiles: chroma format and bit depths (4:2:0, 8 bit)
            avcc += bytes([0xFC | 1, 0xF8, 0xF8, 0])
        w, h = self.width, self.height
        avc1 = _box(b"avc1", b"\x00" * 6, _u(1, 2), b"\x00" * 16, _u(w, 2), _u(h, 2),
                    _u(0x00480000, 4), _u(0x00480000, 4), _u(0, 4), _u(1, 2), b"\x00" * 32,
                    _u(0x18, 2), b"\xff\xff", _box(b"avcC", avcc))
        stbl = _box(b"stbl", _full_box(b"stsd", 0, 0, _u(1, 4), avc1),
                    _full_box(b"stts", 0, 0, _u(0, 4)), _full_box(b"stsc", 0, 0, _u(0, 4)),
                    _full_box(b"stsz", 0, 0, _u(0, 4), _u(0, 4)), _full_box(b"stco", 0, 0, _u(0, 4)))
        minf = _box(b"minf", _full_box(b"vmhd", 0, 1, b"\x00" * 8),
                    _box(b"dinf", _full_box(b"dref", 0, 0, _u(1, 4), _full_box(b"url ", 0, 1))),
                    stbl)
        mdia = _box(b"mdia",
                    _full_box(b"mdhd", 0, 0, _u(0, 4), _u(0, 4), _u(self.timescale, 4), _u(0, 4),
                              _u(0x55C4, 2), _u(0, 2)),  # language "und"
                    _full_box(b"hdlr", 0, 0, _u(0, 4), b"vide", b"\x00" * 12, b"VideoHandler\x00"),
                    minf)
        trak = _box(b"trak",
                    _full_box(b"tkhd", 0, 3, _u(0, 4), _u(0, 4), _u(1, 4), _u(0, 4), _u(0, 4),
                              b"\x00" * 8, _u(0, 2), _u(0, 2), _u(0, 2), _u(0, 2), _matrix(),
                              _u(w << 16, 4), _u(h << 16, 4)),
                    mdia)
        mvhd = _full_box(b"mvhd", 0, 0, _u(0, 4), _u(0, 4), _u(1000, 4), _u(0, 4), _u(0x10000, 4),
                         _u(0x100, 2), b"\x00" * 10, _matrix(), b"\x00" * 24, _u(2, 4))
        mvex = _box(b"mvex", _full_box(b"trex", 0, 0, _u(1, 4), _u(1, 4), _u(0, 4), _u(0, 4), _u(0, 4)))
        ftyp = _box(b"ftyp", b"isom", _u(0x200, 4), b"isom", b"iso6", b"avc1", b"mp41")
        return ftyp + _box(b"moov", mvhd, trak, mvex)

    def encode_chunk(self, frames: np.ndarray) -> bytes:
        """Encode one chunk (uint8 [T, H, W, 3], RGB), its first frame an IDR; return the fragment
        (``moof`` + ``mdat``) of every packet the encoder has let go of (with zerolatency: all of
        this chunk's)."""
        import av

        if self._closed:
            raise RuntimeError("FragmentedMp4Encoder is closed")
        t0 = time.perf_counter()
        frames = _pad_even(_check_frames(frames))
        if (frames.shape[2], frames.shape[1]) != (self.width, self.height):
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the stream "
                             f"{self.width}x{self.height}")
        for index, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(_rgb_to_i420(frame), format="yuv420p")
            vf.pts = self._count
            vf.time_base = 1 / self.fps
            if index == 0:
                vf.pict_type = av.video.frame.PictureType.I  # an IDR (forced-idr=1)
            self._pending.extend(self._packet(p) for p in self._ctx.encode(vf))
            self._count += 1
        out = self._fragment()
        self.encode_seconds += time.perf_counter() - t0
        return out

    def close(self) -> bytes:
        """Drain the encoder; the last fragment (empty when nothing was left)."""
        if self._closed:
            return b""
        self._closed = True
        self._pending.extend(self._packet(p) for p in self._ctx.encode(None))
        return self._fragment()

    @staticmethod
    def _packet(packet) -> tuple:
        data = b"".join(_u(len(u), 4) + u for u in annexb_nal_units(bytes(packet)))
        return (int(packet.pts), int(packet.dts if packet.dts is not None else packet.pts),
                bool(packet.is_keyframe), data)

    def _fragment(self) -> bytes:
        packets, self._pending = self._pending, []
        if not packets:
            return b""
        self._sequence += 1
        d = self.sample_duration
        samples = b"".join(
            _u(d, 4) + _u(len(data), 4) + _u(0x02000000 if key else 0x01010000, 4)
            + ((pts - dts) * d).to_bytes(4, "big", signed=True)
            for pts, dts, key, data in packets)
        mdat = _box(b"mdat", *(data for *_, data in packets))

        def moof(offset: int) -> bytes:
            trun = _full_box(b"trun", 1, 0x000F01, _u(len(packets), 4), offset.to_bytes(4, "big", signed=True),
                             samples)
            traf = _box(b"traf", _full_box(b"tfhd", 0, 0x020000, _u(1, 4)),
                        _full_box(b"tfdt", 1, 0, _u(packets[0][1] * d, 8)), trun)
            return _box(b"moof", _full_box(b"mfhd", 0, 0, _u(self._sequence, 4)), traf)

        size = len(moof(0))
        out = moof(size + 8) + mdat
        self.frames_out += len(packets)
        self.bytes_out += len(out)
        return out


def encode_mp4(
    frames: np.ndarray,
    path: PathLike,
    fps: float = 24,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    threads: int = 0,
) -> VideoInfo:
    """Encode ``frames`` (uint8 [T, H, W, 3], RGB) into an H.264 MP4 at ``path``."""
    frames = _check_frames(frames)
    writer = Mp4Writer(path, fps, crf=crf, preset=preset, threads=threads)
    try:
        writer.write(frames)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def probe_mp4(path: PathLike) -> VideoInfo:
    """Read back the first video stream of ``path``; counts frames by demuxing packets."""
    import av

    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        count = 0
        last_end = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                last_end = max(last_end, end)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if last_end and stream.time_base:
            duration = float(last_end * stream.time_base)
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = count / fps if fps else 0.0
        return VideoInfo(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fps=fps,
            num_frames=count,
            pix_fmt=ctx.format.name if ctx.format is not None else "",
            duration=duration,
        )


def atom_order(path: PathLike, limit: int = 64) -> list:
    """Top-level MP4 box types in file order (``['ftyp', 'moov', 'mdat', ...]``)."""
    order = []
    with open(path, "rb") as fh:
        size_total = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total and len(order) < limit:
            fh.seek(pos)
            header = fh.read(16)
            size = int.from_bytes(header[:4], "big")
            kind = header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = size_total - pos
            if size < 8:
                break
            order.append(kind)
            pos += size
    return order


def is_faststart(path: PathLike) -> bool:
    order = atom_order(path)
    return "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")


# ---- synthetic content for tests and the encoder benchmark -----------------------------------
def synthetic_texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A procedurally generated, natural-looking RGB image (smooth multi-octave value noise with
    coloured gradients and a few hard-edged shapes), uint8 [H, W, 3]."""
    import cv2

    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width), np.float32)
    amp, total = 1.0, 0.0
    for octave in range(8):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        acc += amp * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.6
    acc /= total
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.55 * acc + 0.45 * (xx / width)
    g = 0.6 * acc + 0.4 * (1 - yy / height)
    b = 0.7 * acc + 0.3 * np.sin(xx / 37.0 + yy / 53.0) * 0.5 + 0.15
    img = np.clip(np.stack([r, g, b], -1) * 255, 0, 255).astype(np.uint8)
    for _ in range(40):  # thin structures (branches, wires, edges) a real scene has
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, p0, p1, c, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, center, int(rng.integers(8, max(9, height // 6))), c, -1, cv2.LINE_AA)
    return img


def synthetic_pan(num_frames: int, width: int, height: int, seed: int = 0,
                  speed: float = 2.5) -> np.ndarray:
    """A smooth camera pan (with slight zoom) over a synthetic texture: uint8 [T, H, W, 3]."""
    import cv2

    big_w = int(width * 1.6) + int(speed * num_frames) + 8
    big_h = int(height * 1.4) + 8
    tex = synthetic_texture(big_w, big_h, seed)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        zoom = 1.0 + 0.1 * i / max(1, num_frames - 1)
        cw, ch = width * 1.25 / zoom, height * 1.25 / zoom
        x0 = 4 + speed * i
        y0 = 4 + 0.35 * speed * i * 0.2
        m = np.array([[cw / width, 0, x0], [0, ch / height, y0]], np.float32)
        out[i] = cv2.warpAffine(tex, m, (width, height),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    return out


def _bench(args) -> None:
    import tempfile

    frames = synthetic_pan(args.frames, args.width, args.height)
    print(f"content: synthetic pan, {args.frames} frames {args.width}x{args.height}, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            times = []
            for rep in range(args.repeat):
                path = Path(tmp) / f"{preset}-{rep}.mp4"
                t0 = time.perf_counter()
                encode_mp4(frames, path, args.fps, preset=preset, crf=args.crf)
                times.append(time.perf_counter() - t0)
            size = path.stat().st_size
            print(f"preset={preset:<9} crf={args.crf}  best {min(times):.3f}s  "
                  f"median {sorted(times)[len(times) // 2]:.3f}s  size {size / 1e6:.2f} MB")
        if args.streamed is not None:
            tails = [streamed_tail(frames, Path(tmp) / f"streamed-{rep}.mp4", args.fps, args.streamed, crf=args.crf)
                     for rep in range(args.repeat)]
            print(f"streamed like the AR worker (13 + 16 + ... frames, one chunk every {args.streamed:.2f}s, "
                  f"preset {DEFAULT_PRESET}): left to do after the last chunk: median "
                  f"{sorted(tails)[len(tails) // 2]:.3f}s, best {min(tails):.3f}s")


def ar_chunks(frames: np.ndarray):
    """``frames`` split the way the AR rollout hands them over: 13 (latents 0-3), then 16 each."""
    for start in range(0, len(frames), 16):
        yield frames[max(0, start - 3):start + 13]


def streamed_tail(frames: np.ndarray, path: PathLike, fps: float, gap: float, *, crf: int = DEFAULT_CRF) -> float:
    """Feed ``frames`` to a background writer in AR-sized chunks, ``gap`` seconds apart (the time a
    chunk takes to denoise); return the seconds ``close()`` still takes after the last chunk: the
    encoding a job waits for once its frames are all generated."""
    with Mp4Writer(path, fps, crf=crf, background=True) as writer:
        for index, chunk in enumerate(ar_chunks(frames)):
            if index:
                time.sleep(gap)
            writer.write(chunk)
        t0 = time.perf_counter()
        writer.close()
        return time.perf_counter() - t0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="H.264 encoder benchmark")
    parser.add_argument("--bench", action="store_true", required=True)
    parser.add_argument("--frames", type=int, default=125)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF)
    parser.add_argument("--presets", default="ultrafast,superfast,veryfast,faster,fast,medium")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streamed", type=float, default=None, metavar="GAP",
                        help="also time the streamed path: chunks GAP seconds apart, report the tail")
    _bench(parser.parse_args())
