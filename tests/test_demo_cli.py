"""`python -m pipeline --tiny ...`: the model demo writes a playable H.264 MP4 as it generates."""

from __future__ import annotations

import json

from pipeline.tools.demo import main
from pipeline.video import probe_mp4


def test_demo_writes_the_video(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["--tiny", "--pose", "w-7", "--seed", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    info = probe_mp4(out)
    assert (info.codec, info.num_frames) == ("h264", 29) == (report["codec"], report["num_frames"])
    assert {"denoise", "decode", "hand_over"} <= set(report["timings"])


def test_demo_reports_a_bad_pose_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["--tiny", "--pose", "w-2", "--out", str(out)]) == 1
    assert "error: INVALID_FRAME_COUNT" in capsys.readouterr().err
    assert not out.exists()


def test_demo_removes_a_partial_file_when_generation_fails(tmp_path, capsys, monkeypatch):
    from pipeline.errors import PipelineError
    from pipeline.generation.engine import WorldPlayPipeline

    real = WorldPlayPipeline.generate

    def fail_after_first_chunk(self, request, *args, on_frames=None, **kwargs):
        def hand_over(frames):
            on_frames(frames)
            raise PipelineError("stopped after the first chunk")
        return real(self, request, *args, on_frames=hand_over, **kwargs)

    monkeypatch.setattr(WorldPlayPipeline, "generate", fail_after_first_chunk)
    out = tmp_path / "demo.mp4"
    assert main(["--tiny", "--pose", "w-7", "--out", str(out)]) == 1
    assert "stopped after the first chunk" in capsys.readouterr().err
    assert not out.exists()


def test_state_out_and_continue_from_match_one_long_run(tmp_path, capsys):
    """--state-out / --continue-from: the worker's world sessions from the command line."""
    import torch

    from pipeline.generation.world_state import WorldState

    assert main(["--tiny", "--pose", "w-7, a-4", "--steps", "1", "--out", str(tmp_path / "one.mp4"),
                 "--state-out", str(tmp_path / "one.safetensors")]) == 0
    assert main(["--tiny", "--pose", "w-7", "--steps", "1", "--out", str(tmp_path / "a.mp4"),
                 "--state-out", str(tmp_path / "a.safetensors")]) == 0
    capsys.readouterr()
    assert main(["--tiny", "--continue-from", str(tmp_path / "a.safetensors"), "--pose", "a-4",
                 "--out", str(tmp_path / "b.mp4"), "--state-out", str(tmp_path / "b.safetensors")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_frames"] == 16 and report["session_latents"] == 12
    one = WorldState.load(tmp_path / "one.safetensors")
    split = WorldState.load(tmp_path / "b.safetensors")
    assert split.num_inference_steps == 1 and torch.equal(split.latents, one.latents)
    assert main(["--tiny", "--continue-from", str(tmp_path / "missing.safetensors"), "--pose", "w-4",
                 "--out", str(tmp_path / "c.mp4")]) == 1
    assert "error: STATE_NOT_FOUND" in capsys.readouterr().err


def test_a_fast_decoder_video_and_its_full_quality_redecode(tmp_path, capsys):
    """--decoder fast renders with the tiny TAEHV; --redecode turns its saved state into the full VAE's video,
    the frames a full-decoder run of the same world makes."""
    import numpy as np
    from conftest import decode_rgb as read_frames

    fast, full, again = tmp_path / "fast.mp4", tmp_path / "full.mp4", tmp_path / "again.mp4"
    state = tmp_path / "world.safetensors"
    assert main(["--tiny", "--pose", "w-7", "--seed", "3", "--decoder", "fast", "--out", str(fast),
                 "--state-out", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)["num_frames"] == 29
    assert main(["--tiny", "--redecode", str(state), "--out", str(again)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["decoder"], report["num_frames"], report["session_latents"]) == ("full", 29, 8)
    assert main(["--tiny", "--pose", "w-7", "--seed", "3", "--out", str(full)]) == 0
    a, b = read_frames(again).astype(int), read_frames(full).astype(int)
    assert np.abs(a - b).mean() < 0.5  # the same frames into the encoder (H.264 may differ in a few pixels)
    assert np.abs(read_frames(fast).astype(int) - b).mean() > 5  # the tiny TAEHV and the tiny VAE differ
