"""The fast decoder (pipeline/encoders/fast_decode.py): the published key layout, strict loading, streaming
equal to the whole video, frame counts, resume after a history; its weight files (model_files/fast_decoder.py).

Everything runs on small random-weight files in the published layout, written on the fly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.encoders.fast_decode import (
    FastVideoDecoder,
    TAEHVDecoder,
    TAEHVDecoderConfig,
    fast_decoder_key_shapes,
    load_fast_decoder,
)
from pipeline.errors import CheckpointError
from pipeline.tools.tiny import write_tiny_fast_decoder

KEYS = Path(__file__).parent / "data" / "taehv1_5_keys.tsv"


def _published(file: str) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in KEYS.read_text().splitlines() if line and not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.strip("[]").split(", ")) for name, key, shape in rows if name == file}


@pytest.mark.parametrize("file, config", [("taehv1_5", TAEHVDecoderConfig()),
                                          ("taehv1_5_super", TAEHVDecoderConfig.super_())])
def test_the_decoder_layout_is_the_published_one(file, config):
    published = _published(file)
    decoder = {k: v for k, v in published.items() if k.startswith("decoder.")}
    assert decoder and len(published) > len(decoder)  # the file also holds the encoder half
    assert fast_decoder_key_shapes(config) == decoder
    assert TAEHVDecoderConfig.from_shapes(published) == config


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    return write_tiny_fast_decoder(tmp_path_factory.mktemp("taehv") / "taehv1_5.safetensors")


@pytest.fixture(scope="module")
def model(tiny_file) -> TAEHVDecoder:
    return load_fast_decoder(tiny_file)


def _latents(n: int, h: int = 3, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 32, n, h, w, generator=torch.Generator().manual_seed(seed))


def test_frames_shapes_and_range(model):
    video = FastVideoDecoder(model).decode(_latents(8))
    assert video.shape == (1, 3, 29, 48, 80) and video.dtype == torch.float32
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    assert float(video.std()) > 0.01  # not saturated to a constant


@pytest.mark.parametrize("chunking", [(4, 4, 4), (1,) * 12, (4, 1, 3, 4), (12,)])
def test_streaming_equals_the_whole_video(model, chunking):
    latents = _latents(12)
    whole = FastVideoDecoder(model).decode(latents)
    decoder, parts, start = FastVideoDecoder(model), [], 0
    for size in chunking:
        parts.append(decoder.decode(latents[:, :, start:start + size]))
        start += size
    assert [p.shape[2] for p in parts][:1] == [4 * chunking[0] - 3]
    assert all(p.shape[2] == 4 * size for p, size in zip(parts[1:], chunking[1:]))
    assert decoder.frames_decoded == 45 == whole.shape[2]
    assert float((torch.cat(parts, 2) - whole).abs().max()) <= 1e-5


def test_resume_after_a_history_gives_the_frames_of_one_long_decode(model):
    latents = _latents(20, seed=1)
    whole = FastVideoDecoder(model).decode(latents)
    needed = model.history_latents()
    assert needed == 8
    decoder = FastVideoDecoder(model)
    decoder.resume(latents[:, :, 16 - needed:16], 16 - needed)
    assert decoder.latents_decoded == 16
    tail = decoder.decode(latents[:, :, 16:])
    assert float((tail - whole[:, :, 4 * 15 + 1:]).abs().max()) <= 1e-5


def test_super_layout_streams_too(tmp_path):
    path = write_tiny_fast_decoder(tmp_path / "taehv1_5_super.safetensors", variant="super")
    model = load_fast_decoder(path)
    assert model.config.variant == "super" and model.config.widths == (16, 8, 8, 8)
    latents = _latents(8)
    whole = FastVideoDecoder(model).decode(latents)
    decoder = FastVideoDecoder(model)
    streamed = torch.cat([decoder.decode(latents[:, :, :4]), decoder.decode(latents[:, :, 4:])], 2)
    assert whole.shape == (1, 3, 29, 48, 80)
    assert float((streamed - whole).abs().max()) <= 1e-5


def _rewrite(src: Path, dst: Path, change) -> Path:
    tensors = load_file(str(src))
    change(tensors)
    save_file(tensors, str(dst))
    return dst


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop("decoder.14.weight"), "missing"),
    (lambda t: t.update({"decoder.30.weight": torch.zeros(1)}), "unexpected"),
    (lambda t: t.update({"vae.weight": torch.zeros(1)}), "unexpected"),
    (lambda t: t.update({"decoder.13.conv.weight": torch.zeros(8, 8, 1, 1)}), "wrong shapes"),
])
def test_the_loader_is_strict(tiny_file, tmp_path, change, words):
    bad = _rewrite(tiny_file, tmp_path / "bad.safetensors", change)
    with pytest.raises(CheckpointError, match=words):
        load_fast_decoder(bad)


def test_a_truncated_file_is_refused(tiny_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_file.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_fast_decoder(cut)


def test_encoder_tensors_are_allowed_and_a_stride_two_time_grow_keeps_the_last_frame(tiny_file, tmp_path):
    original = load_file(str(tiny_file))
    extra = torch.randn(16, 16, 1, 1)

    def change(t):
        t["encoder.0.weight"] = torch.zeros(64, 12, 3, 3)
        t["decoder.7.conv.weight"] = torch.cat([extra, original["decoder.7.conv.weight"]])

    model = load_fast_decoder(_rewrite(tiny_file, tmp_path / "wide.safetensors", change))
    assert torch.equal(model.state_dict()["decoder.7.conv.weight"], original["decoder.7.conv.weight"])


# ---- the weight file: where it comes from -----------------------------------------------------------------


def test_the_file_is_found_in_the_local_layout_and_its_absence_is_a_reason(tmp_path, monkeypatch):
    from pipeline.model_files import fast_decoder as files
    from pipeline.model_files.resolve import Settings, snapshot_dirs

    monkeypatch.setenv("RUNPOD_HF_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    settings = Settings.from_env(model_dir=tmp_path, allow_download=False)
    found = files.find_fast_decoder(settings, snapshot_dirs)
    assert found.path is None and "download_models.py --fast-decoder" in found.reason
    write_tiny_fast_decoder(tmp_path / "TAEHV" / "taehv1_5.safetensors")
    found = files.find_fast_decoder(settings, snapshot_dirs)
    assert found.path == tmp_path / "TAEHV" / "taehv1_5.safetensors" and found.source == "local"
    monkeypatch.setenv("WORLDPLAY_FAST_DECODER", "0")
    assert files.find_fast_decoder(settings, snapshot_dirs).reason == "WORLDPLAY_FAST_DECODER=0"
    monkeypatch.setenv("WORLDPLAY_FAST_DECODER", "taehv9")
    assert "expected taehv1_5" in files.find_fast_decoder(settings, snapshot_dirs).reason


class _Response:
    def __init__(self, status: int, body: bytes = b""):
        import requests

        self.status_code, self.body = status, body
        self.error = requests.HTTPError(f"{status}", response=self) if status >= 400 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def raise_for_status(self):
        if self.error:
            raise self.error

    def iter_content(self, size):
        yield self.body


def test_the_download_retries_transient_errors_and_checks_the_blob_id(tmp_path, monkeypatch):
    import requests

    from pipeline.errors import ModelDownloadError
    from pipeline.model_files import fast_decoder as files
    from pipeline.model_files import hub
    from pipeline.model_files.hub import RetryPolicy

    body = write_tiny_fast_decoder(tmp_path / "src.safetensors").read_bytes()
    answers = [_Response(503), _Response(200, body)]
    monkeypatch.setattr(requests, "get", lambda url, **kw: answers.pop(0))
    waits = []
    monkeypatch.setattr(hub, "_sleep", waits.append)
    blob = files.git_blob_id(tmp_path / "src.safetensors")
    out = files.download_fast_decoder("taehv1_5.safetensors", tmp_path / "dl", RetryPolicy(3, 1.0, 5.0),
                                      expected_blob=blob)
    assert out.read_bytes() == body and waits == [1.0] and not list((tmp_path / "dl").glob("*.partial"))
    monkeypatch.setattr(requests, "get", lambda url, **kw: _Response(200, body + b"x"))
    with pytest.raises(ModelDownloadError, match="not the published file"):
        files.download_fast_decoder("taehv1_5.safetensors", tmp_path / "dl2", expected_blob=blob)
    monkeypatch.setattr(requests, "get", lambda url, **kw: _Response(404))
    with pytest.raises(ModelDownloadError, match="failed"):
        files.download_fast_decoder("taehv1_5.safetensors", tmp_path / "dl3", RetryPolicy(3, 1.0, 5.0))
    assert files.source_url("taehv1_5.safetensors").startswith(
        f"https://github.com/madebyollin/taehv/raw/{files.SOURCE_COMMIT}/safetensors/")


def test_download_models_fetches_and_checks_the_fast_decoder(tiny_models, tmp_path, monkeypatch, capsys):
    import shutil

    import requests

    import download_models
    from pipeline.model_files import fast_decoder as files

    dest = tmp_path / "models"
    shutil.copytree(tiny_models, dest)
    body = write_tiny_fast_decoder(tmp_path / "src.safetensors").read_bytes()
    monkeypatch.setitem(files.SOURCE_BLOBS, "taehv1_5.safetensors", files.git_blob_id(tmp_path / "src.safetensors"))
    monkeypatch.setenv("RUNPOD_HF_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    monkeypatch.delenv("WORLDPLAY_MODEL_DIR", raising=False)
    assert download_models.main(["--check", "--fast-decoder", "--dest", str(dest)]) == 1
    assert "TAEHV/taehv1_5.safetensors: missing" in capsys.readouterr().err
    urls = []
    monkeypatch.setattr(requests, "get", lambda url, **kw: urls.append(url) or _Response(200, body))
    assert download_models.main(["--fast-decoder", "--dest", str(dest), "--no-progress"]) == 0
    assert "downloaded from https://github.com/madebyollin/taehv/raw/" in capsys.readouterr().out and len(urls) == 1
    assert download_models.main(["--check", "--fast-decoder", "--dest", str(dest)]) == 0
    assert download_models.main(["--fast-decoder", "--dest", str(dest), "--no-download"]) == 0  # kept
    (dest / "TAEHV" / "taehv1_5.safetensors").write_bytes(body[:-1] + b" ")  # same size, other bytes
    assert download_models.main(["--check", "--fast-decoder", "--dest", str(dest)]) == 1
    assert "not the published taehv1_5.safetensors" in capsys.readouterr().err


# ---- quality against the full VAE (pipeline.tools.decoder_quality) ---------------------------------------


def test_psnr_and_ssim_of_known_frames():
    from pipeline.tools.decoder_quality import psnr, ssim

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    assert psnr(frames, frames) == float("inf") and ssim(frames, frames) == pytest.approx(1.0)
    off_by_one = np.clip(frames.astype(int) + 1, 0, 255).astype(np.uint8)
    mse = np.mean((frames.astype(float) - off_by_one) ** 2)
    assert psnr(frames, off_by_one) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    noisy = np.clip(frames + rng.normal(0, 20, frames.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(frames + rng.normal(0, 60, frames.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ssim(frames, noisy) > ssim(frames, noisier) > -1.0
    assert psnr(frames, noisy) > psnr(frames, noisier)
    # constant frames that differ only in brightness: structure is equal, luminance is not
    flat = np.full((1, 16, 16, 3), 100, np.uint8)
    assert ssim(flat, flat + 50) < 1.0


def test_the_decoder_quality_tool_compares_the_fast_decoder_with_the_full_vae(tmp_path, capsys):
    import json

    from pipeline.tools.decoder_quality import main

    out = tmp_path / "quality.json"
    assert main(["--tiny", "--pose", "w-3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["decoder"] for r in rows] == ["full", "taehv1_5"] and {r["frames"] for r in rows} == {13}
    fast = rows[1]
    assert fast["decode_seconds"] > 0 and np.isfinite(fast["psnr_db"]) and -1 <= fast["ssim"] <= 1
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
