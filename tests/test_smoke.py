"""smoke_test.py: the local acceptance gate (REAL tiny pipeline) and its failure reporting."""

from __future__ import annotations

import numpy as np
import pytest

import smoke_test
from pipeline.video import encode_mp4


def test_run_local_passes(tiny_models, tmp_path):
    report = smoke_test.run_local(model_dir=str(tiny_models), keep_dir=str(tmp_path))
    video = report["video"]
    assert video["codec"] == "h264" and video["num_frames"] == 13 and video["fps"] == 24
    assert (video["width"], video["height"]) == (report["output"]["width"],
                                                 report["output"]["height"])
    assert (tmp_path / "smoke.mp4").stat().st_size == report["bytes"]
    # the world session: the state of the first job continued by 4 latents = 16 new frames
    assert report["output"]["state_key"].endswith("/world.safetensors")
    assert report["continuation"]["video"]["num_frames"] == 16
    assert report["continuation"]["state_key"] != report["output"]["state_key"]


def test_check_mp4_reports_each_mismatch(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    encode_mp4(frames, tmp_path / "a.mp4", fps=24)
    data = (tmp_path / "a.mp4").read_bytes()
    info = smoke_test.check_mp4(data, width=48, height=32, fps=24, num_frames=5, what="ok")
    assert info["num_frames"] == 5
    with pytest.raises(smoke_test.SmokeFailure) as failure:
        smoke_test.check_mp4(data, width=64, height=32, fps=30, num_frames=9, what="x.mp4")
    msg = str(failure.value)
    assert msg.startswith("x.mp4: ") and "size 48x32 != 64x32" in msg
    assert "fps 24.0 != 30" in msg and "5 frames != 9" in msg
    with pytest.raises(smoke_test.SmokeFailure, match="not a readable MP4"):
        smoke_test.check_mp4(b"garbage", width=None, height=None, fps=24, num_frames=1,
                             what="g")


def test_cli_failure_exit_code(monkeypatch, capsys):
    def broken(**kwargs):
        raise smoke_test.SmokeFailure("job failed: MODEL_NOT_FOUND: no weights")

    monkeypatch.setattr(smoke_test, "run_local", broken)
    assert smoke_test.main(["--local"]) == 1
    assert "SMOKE TEST FAILED: job failed: MODEL_NOT_FOUND" in capsys.readouterr().err


def test_endpoint_mode_needs_api_key(monkeypatch, capsys):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert smoke_test.main(["--endpoint", "abc123"]) == 1
    assert "RUNPOD_API_KEY is not set" in capsys.readouterr().err


def test_pose_json_is_accepted_by_the_camera_parser():
    from pipeline.generation.camera import parse_pose

    for latents in (4, 8):
        traj = parse_pose(smoke_test.make_pose_json(latents))
        assert traj.num_latents == latents
        assert traj.num_frames == smoke_test.expected_frames(latents)


def test_watch_shows_progress_and_a_viewer_link_the_moment_the_preview_exists(tiny_models):
    """`smoke_test.py --local --watch` (issue 23, item 4): the progress updates /status would carry,
    and as soon as one names the preview playlist, a viewer link whose src is that URL, encoded."""
    import io
    from urllib.parse import parse_qs, urlsplit

    out = io.StringIO()
    watch = smoke_test.Watcher(out=out)
    report = smoke_test.run_local(model_dir=str(tiny_models), num_latents=16, watch=watch)
    assert report["video"]["num_frames"] == 61
    stages = [u["stage"] for u in watch.updates]
    assert stages[0] == "fetch" and "denoising" in stages
    first = next(i for i, u in enumerate(watch.updates) if u.get("preview_url"))
    assert first < len(watch.updates) - 1  # the link comes while the job still runs
    preview_url = watch.updates[first]["preview_url"]
    assert watch.link.startswith(watch.viewer_base + "/index.html?src=")
    assert parse_qs(urlsplit(watch.link).query)["src"] == [preview_url]
    text = out.getvalue()
    assert f"preview ready: {watch.link}" in text and text.index("progress ") < text.index("preview ready")
    assert watch._server is None  # the viewer server stopped with the run
