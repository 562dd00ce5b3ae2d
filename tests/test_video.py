"""pipeline.video: H.264 / yuv420p / faststart MP4s with exactly the frames given."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import decode_rgb

from pipeline.video import (
    Mp4Writer,
    atom_order,
    encode_mp4,
    is_faststart,
    probe_mp4,
    streamed_tail,
    synthetic_pan,
)


@pytest.fixture(scope="module")
def pan():
    return synthetic_pan(17, 96, 64, seed=3)


def test_encode_properties(tmp_path, pan):
    path = tmp_path / "a.mp4"
    info = encode_mp4(pan, path, fps=24)
    probed = probe_mp4(path)
    assert probed.codec == "h264" and probed.pix_fmt == "yuv420p"
    assert (probed.width, probed.height, probed.num_frames) == (96, 64, 17)
    assert probed.fps == pytest.approx(24.0)
    assert probed.duration == pytest.approx(17 / 24, abs=1e-3)
    assert info == probed
    order = atom_order(path)
    assert order[0] == "ftyp" and order.index("moov") < order.index("mdat")
    assert is_faststart(path)


@pytest.mark.parametrize("fps", [1, 12, 30, 60])
def test_fps_and_frame_count(tmp_path, pan, fps):
    info = probe_mp4(encode_mp4(pan[:9], tmp_path / "f.mp4", fps=fps) and tmp_path / "f.mp4")
    assert info.fps == pytest.approx(fps) and info.num_frames == 9
    assert info.duration == pytest.approx(9 / fps, abs=1e-3)
    assert len(decode_rgb(tmp_path / "f.mp4")) == 9


def test_single_frame(tmp_path, pan):
    info = encode_mp4(pan[0], tmp_path / "one.mp4", fps=24)  # [H, W, 3] is one frame
    assert probe_mp4(tmp_path / "one.mp4").num_frames == 1 == info.num_frames


def test_content_survives_and_colours_are_not_swapped(tmp_path, pan):
    import cv2

    # smooth content (4:2:0 chroma subsampling alone blurs thin coloured lines at this size)
    frames = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in pan])
    frames[:, :16, :16] = (230, 20, 20)  # a red patch
    encode_mp4(frames, tmp_path / "c.mp4", fps=24)
    back = decode_rgb(tmp_path / "c.mp4")
    assert back.shape == frames.shape
    err = np.abs(back.astype(np.int16) - frames.astype(np.int16)).mean()
    assert err < 6.0, err  # a range or channel-order bug gives 20+
    patch = back[:, 4:12, 4:12].reshape(-1, 3).mean(0)
    assert patch[0] > 180 and patch[1] < 70 and patch[2] < 70, patch


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = synthetic_pan(5, 63, 47)
    info = encode_mp4(frames, tmp_path / "odd.mp4", fps=24)
    assert (info.width, info.height) == (64, 48)
    probed = probe_mp4(tmp_path / "odd.mp4")
    assert (probed.width, probed.height, probed.num_frames) == (64, 48, 5)
    back = decode_rgb(tmp_path / "odd.mp4")
    # the padding replicates the edge: the last column looks like the one before it
    assert np.abs(back[:, :47, 63].astype(int) - back[:, :47, 62].astype(int)).mean() < 12


def test_incremental_writer_matches_one_shot(tmp_path, pan):
    with Mp4Writer(tmp_path / "inc.mp4", fps=24) as writer:
        for start in range(0, 17, 4):
            writer.write(pan[start:start + 4])
        assert writer.num_frames == 17
    assert writer.info.num_frames == 17
    probed = probe_mp4(tmp_path / "inc.mp4")
    assert probed.num_frames == 17 and is_faststart(tmp_path / "inc.mp4")
    encode_mp4(pan, tmp_path / "one.mp4", fps=24)
    a, b = decode_rgb(tmp_path / "inc.mp4"), decode_rgb(tmp_path / "one.mp4")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3.0  # x264 threading: not bit-exact


def test_background_writer(tmp_path, pan):
    writer = Mp4Writer(tmp_path / "bg.mp4", fps=24, background=True, max_pending=2)
    for start in range(0, 17, 2):
        writer.write(pan[start:start + 2])
    info = writer.close()
    assert info.num_frames == 17 and probe_mp4(tmp_path / "bg.mp4").num_frames == 17
    assert writer.close() is info  # idempotent


def test_background_writer_surfaces_errors(tmp_path, pan):
    writer = Mp4Writer(tmp_path / "bad.mp4", fps=24, background=True, preset="no-such-preset")
    writer.write(pan[:2])
    with pytest.raises(Exception):
        for _ in range(3):
            writer.write(pan[2:4])
        writer.close()
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("frames, exc, match", [
    (np.zeros((2, 16, 16, 3), np.float32), ValueError, "uint8"),
    (np.zeros((2, 16, 16), np.uint8), ValueError, "shape"),
    (np.zeros((2, 16, 16, 4), np.uint8), ValueError, "shape"),
    (np.zeros((2, 1, 16, 3), np.uint8), ValueError, "too small"),
    ([[0]], TypeError, "numpy"),
])
def test_rejects_bad_frames(tmp_path, frames, exc, match):
    with pytest.raises(exc, match=match):
        encode_mp4(frames, tmp_path / "x.mp4", fps=24)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("fps", [0, -1, 1000, True, "24"])
def test_rejects_bad_fps(tmp_path, pan, fps):
    with pytest.raises(ValueError):
        encode_mp4(pan, tmp_path / "x.mp4", fps=fps)


def test_size_change_and_empty_writer(tmp_path, pan):
    writer = Mp4Writer(tmp_path / "s.mp4", fps=24)
    writer.write(pan[:2])
    with pytest.raises(ValueError, match="frame size changed"):
        writer.write(np.zeros((1, 32, 32, 3), np.uint8))
    writer.abort()
    assert not (tmp_path / "s.mp4").exists()
    empty = Mp4Writer(tmp_path / "e.mp4", fps=24)
    with pytest.raises(ValueError, match="no frames"):
        empty.close()
    assert not (tmp_path / "e.mp4").exists()
    with pytest.raises(RuntimeError):
        empty.write(pan[:1])


def test_context_manager_aborts_on_error(tmp_path, pan):
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(tmp_path / "cm.mp4", fps=24) as writer:
            writer.write(pan[:3])
            raise RuntimeError("boom")
    assert not (tmp_path / "cm.mp4").exists()


def test_abort_with_chunks_queued_stops_the_thread_and_removes_the_file(tmp_path, pan):
    """A job failing mid-stream: queued chunks are dropped, the encoder thread ends, no file stays."""
    writer = Mp4Writer(tmp_path / "a.mp4", fps=24, background=True, max_pending=8)
    for start in range(0, 16, 2):
        writer.write(pan[start:start + 2])
    writer.abort()
    assert not writer._thread.is_alive()
    assert not (tmp_path / "a.mp4").exists()
    writer.abort()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(pan[:1])


def test_streamed_tail_measures_only_what_is_left(tmp_path):
    frames = synthetic_pan(45, 96, 64, seed=1)  # 13 + 16 + 16, like a 3-chunk AR video
    tail = streamed_tail(frames, tmp_path / "s.mp4", 24, gap=0.05)
    assert 0 < tail < 5
    assert probe_mp4(tmp_path / "s.mp4").num_frames == 45
    # the same frames in the same order as one encode of the whole video (x264 decisions may differ
    # by a code value here and there, so compare decoded pictures, not bytes)
    encode_mp4(frames, tmp_path / "whole.mp4", 24)
    streamed, whole = decode_rgb(tmp_path / "s.mp4").astype(int), decode_rgb(tmp_path / "whole.mp4").astype(int)
    assert streamed.shape == whole.shape and np.abs(streamed - whole).mean() < 0.5
