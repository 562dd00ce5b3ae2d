"""What a newcomer runs first (issue 12, items 11 and 12): the demo CLI checks its inputs before
building any model and saves the input image and the path plot beside the MP4; smoke_test --save
does the same; the benchmark refuses a full-size build without a GPU; the GPU image's CUDA
bindings match its CUDA series."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import smoke_test
from pipeline.tools.demo import main as demo_main
from pipeline.tools.demo import side_files
from pipeline.tools import bench
from pipeline.video import probe_mp4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_model_builds(monkeypatch):
    """Any model build fails the test: input errors must come first."""
    import pipeline.generation.engine
    import pipeline.model_files.resolve
    import pipeline.tools.tiny

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built before the inputs were checked")

    monkeypatch.setattr(pipeline.tools.tiny, "write_tiny_models", forbidden)
    monkeypatch.setattr(pipeline.model_files.resolve, "resolve_models", forbidden)
    monkeypatch.setattr(pipeline.generation.engine.WorldPlayPipeline, "from_paths", forbidden)
    monkeypatch.setattr(bench, "build_full_size", forbidden)
    monkeypatch.setattr(bench, "build_for_rank", forbidden)


def test_demo_checks_inputs_before_building_models(tmp_path, capsys, no_model_builds):
    out = tmp_path / "demo.mp4"
    assert demo_main(["--tiny", "--image", str(tmp_path / "missing.png"), "--out", str(out)]) == 1
    assert "error: INVALID_IMAGE: --image" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert demo_main(["--tiny", "--image", str(bad), "--out", str(out)]) == 1
    assert "could not be read as an image" in capsys.readouterr().err
    assert demo_main(["--tiny", "--out", str(tmp_path / "no" / "such" / "demo.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert demo_main(["--tiny", "--pose", "w-30", "--out", str(out)]) == 1
    assert "'w-31' instead of 'w-30'" in capsys.readouterr().err
    assert demo_main(["--tiny", "--pose", str(tmp_path / "nope.json"), "--out", str(out)]) == 1
    assert "error: INVALID_POSE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [bad]  # nothing written


def test_python_m_pipeline_missing_image_is_one_clean_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline", "--tiny", "--image", "missing.png",
                           "--out", str(tmp_path / "x.mp4")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: INVALID_IMAGE: --image 'missing.png' does not exist or is not a file")


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_demo_saves_input_image_and_path_plot_beside_the_video(tmp_path, capsys):
    source = tmp_path / "in.png"
    pixels = np.zeros((48, 80, 3), np.uint8)
    pixels[:, :40] = (200, 30, 30)
    Image.fromarray(pixels).save(source)
    out = tmp_path / "demo.mp4"
    assert demo_main(["--tiny", "--image", str(source), "--pose", "w-3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    input_png, path_png = side_files(out)
    assert (report["input_image"], report["path_plot"]) == (str(input_png), str(path_png))
    assert probe_mp4(out).num_frames == 13
    assert (np.asarray(Image.open(input_png)) == pixels).all()
    assert Image.open(path_png).size == (900, 760)


def test_smoke_test_save_writes_video_input_and_path(tiny_models, tmp_path, capsys):
    assert smoke_test.main(["--local", "--model-dir", str(tiny_models), "--save",
                            str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("smoke.mp4", "smoke_input.png", "smoke_path.png"):
        assert (tmp_path / name).stat().st_size > 0 and f"saved {tmp_path / name}" in printed
    assert Image.open(tmp_path / "smoke_input.png").size == (832, 480)
    assert Image.open(tmp_path / "smoke_path.png").format == "PNG"


def test_bench_refuses_full_size_without_a_gpu(monkeypatch, capsys, no_model_builds):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert bench.main(["--modes", "bidirectional"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "python -m pipeline.bench --tiny" in err


def test_cuda_bindings_pinned_to_the_images_cuda_series():
    dockerfile = (REPO / "Dockerfile").read_text()
    cuda_major = re.search(r"^FROM nvidia/cuda:(\d+)\.", dockerfile, re.M).group(1)
    torch_index = re.search(r"download\.pytorch\.org/whl/cu(\d\d)\d", dockerfile).group(1)
    assert cuda_major == torch_index == "12"
    pins = dict(line.split("==") for line in (REPO / "requirements-gpu.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert pins["cuda-bindings"].split(".")[0] == cuda_major
    assert not [name for name in pins if "cu13" in name]


# ---- issue 23, items 9 and 10: every CLI error is a documented code, in the flag's own words; the
# demo leaves nothing in the checkout ---------------------------------------------------------------
def test_cli_errors_use_documented_codes_and_the_flag_typed(tmp_path, capsys, no_model_builds):
    from worker.errors import ERROR_CODES

    assert demo_main(["--tiny", "--out", str(tmp_path / "no" / "such" / "demo.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_INPUT: --out ") and "INVALID_INPUT" in ERROR_CODES
    assert "PIPELINE_ERROR" not in err
    assert demo_main(["--tiny", "--sp", "x", "--out", str(tmp_path / "d.mp4")]) == 1
    err = capsys.readouterr().err
    assert "error: SEQUENCE_PARALLEL_CONFIG: --sp x is not a number" in err
    assert "WORLDPLAY_SEQUENCE_PARALLEL" not in err


def test_sp_messages_name_the_flag():
    from pipeline.dit.parallel import ENV
    from pipeline.tools.demo import sp_flag_message

    assert sp_flag_message(f"{ENV}=3 does not divide the transformer's 16 attention heads (use one of "
                           "[1, 2, 4, 8, 16])", "3") == \
        "--sp 3 does not divide the transformer's 16 attention heads (use one of [1, 2, 4, 8, 16])"
    gpus = sp_flag_message(f"{ENV}=4 but only 1 GPU(s) are visible; set 'GPUs per worker' on the endpoint to "
                           f"at least 4, or lower {ENV}", "4")
    assert gpus == "--sp 4 but only 1 GPU(s) are visible; run it where at least 4 GPUs are visible, or lower --sp"


def test_demo_default_output_goes_to_the_ignored_out_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo_main(["--tiny", "--pose", "w-3"]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["out/demo.mp4", "out/demo_input.png", "out/demo_path.png"], written
    ignore = (REPO / ".gitignore").read_text().splitlines()
    assert "/out/" in ignore
