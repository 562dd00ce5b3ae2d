"""The optional fast paths change speed, not results: compiled blocks, host-resident text encoder."""

from __future__ import annotations

import os

import torch
from torch import nn

from pipeline.dit.ar_cache import ARCacheLayout
from pipeline.dit.config import WorldPlayConfig
from pipeline.dit.transformer import WorldPlayTransformer, disable_compile
from pipeline.generation import engine
from pipeline.generation.engine import HostResident, _compile_with_cache


def _inputs(model: WorldPlayTransformer, frames: int, rope_start: int = 0):
    g = torch.Generator().manual_seed(frames + rope_start)
    latents = torch.randn(1, 65, frames, 3, 5, generator=g)
    viewmats = torch.eye(4).repeat(1, frames, 1, 1)
    viewmats[..., 2, 3] = -0.08 * torch.arange(frames)
    intrinsics = torch.tensor([[0.5, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1.0]]).repeat(1, frames, 1, 1)
    return model.embed_video(latents, torch.full((frames,), 625.0), torch.arange(frames) % 81, viewmats, intrinsics,
                             rope_start=rope_start)


def _run_all(model: WorldPlayTransformer):
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    cond = model.embed_condition(
        torch.randn(1, 7, cfg.text_dim, generator=g), torch.tensor([[1, 1, 1, 1, 1, 0, 0]]),
        torch.randn(1, 4, cfg.byt5_dim, generator=g), torch.tensor([[1, 1, 0, 0]]),
        torch.randn(1, 6, cfg.vision_dim, generator=g), 0.0,
    )
    bidirectional = model(_inputs(model, 4), cond)
    cache = model.ar_start(cond, ARCacheLayout((3, 5), max_context_latents=4, chunk_latents=4))
    model.ar_context_pass(cache, _inputs(model, 4))
    chunk = model.ar_chunk_pass(cache, _inputs(model, 4, rope_start=4))
    return bidirectional, chunk


def test_compiled_blocks_match_eager_and_keep_their_kernels_in_the_cache_folder(tmp_path, monkeypatch):
    """WORLDPLAY_COMPILE=1's blocks give the eager results, and what they compile lands in the chosen
    cache folder (on RunPod: the network volume), where the next worker start finds it."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("WORLDPLAY_COMPILE_CACHE", str(tmp_path / "compile-cache"))
    torch.manual_seed(0)
    model = WorldPlayTransformer(WorldPlayConfig.tiny()).eval()
    with torch.no_grad():
        eager = _run_all(model)
        assert _compile_with_cache()
        try:
            compiled = _run_all(model)
        finally:
            disable_compile()
        again = _run_all(model)
    for a, b, c in zip(eager, compiled, again):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
        assert torch.equal(a, c)  # eager is restored exactly
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile-cache")
    assert any(path.is_file() for path in (tmp_path / "compile-cache").rglob("*"))


def test_compile_cache_folder_choice(tmp_path, monkeypatch):
    volume = tmp_path / "runpod-volume"
    monkeypatch.setattr(engine, "RUNPOD_VOLUME", str(volume))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "WORLDPLAY_COMPILE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    assert engine.compile_cache_dir() is None  # no volume: torch's default in the container's /tmp
    volume.mkdir()
    assert engine.compile_cache_dir() == str(volume / "worldplay" / "torch-compile-cache")
    monkeypatch.setenv("WORLDPLAY_COMPILE_CACHE", "")
    assert engine.compile_cache_dir() is None  # explicitly off
    monkeypatch.setenv("WORLDPLAY_COMPILE_CACHE", "/cache/here")
    assert engine.compile_cache_dir() == "/cache/here"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's import writes its default there
    assert engine.compile_cache_dir() == "/cache/here"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/torch/own")
    assert engine.compile_cache_dir() == "/torch/own"  # an operator's own torch setting wins


def test_host_resident_module_visits_the_device_and_leaves_host_copies():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    x = torch.randn(2, 8)
    expected = module(x)
    resident = HostResident(module, torch.device("cpu"))
    host_ptrs = {name: t.data_ptr() for name, t in resident.host.items()}
    with resident.on_device():
        assert torch.equal(module(x), expected)
    assert {n: p.data_ptr() for n, p in module.named_parameters()} == {n: host_ptrs[n] for n, _ in module.named_parameters()}
    assert torch.equal(module(x), expected)


def test_an_unusable_compile_cache_folder_does_not_stop_compilation(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("WORLDPLAY_COMPILE_CACHE", str(blocker / "cache"))
    enabled = []
    monkeypatch.setattr(engine, "enable_compile", lambda: enabled.append(True) or True)
    assert _compile_with_cache() and enabled == [True]
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_optimised_dit_paths_render_the_frames_of_the_unoptimised_ones(tiny_pipeline, monkeypatch):
    """End to end at tiny size: complex-multiply RoPE, fused multiply-add modulation and gating, and
    the K/V-only last block of the text and context passes, against the real-valued RoPE, separate
    products and sums, and full last blocks (three AR chunks, so two context passes run). The frames
    agree to float32 rounding: at most one uint8 level here and there."""
    import numpy as np
    from PIL import Image

    from pipeline.dit import transformer
    from pipeline.dit.transformer import DoubleStreamBlock, Rope, per_frame
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    ys, xs = np.mgrid[0:90, 0:160]
    image = Image.fromarray(np.stack([xs % 256, (ys * 2) % 256, (xs + ys) % 256], -1).astype(np.uint8))
    request = GenerationRequest(prompt="a lighthouse on a cliff", image=image, camera=parse_pose("w-11"), seed=5)
    optimised = tiny_pipeline.generate(request).frames

    full_cached, full_text = DoubleStreamBlock.forward_cached, DoubleStreamBlock.forward_text
    monkeypatch.setattr(Rope, "__call__", Rope.rotate_real)
    monkeypatch.setattr(transformer, "modulate", lambda x, shift, scale: (
        per_frame(x, shift.shape[1]) * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).view_as(x))
    monkeypatch.setattr(transformer, "add_gated", lambda residual, x, gate: residual + (
        per_frame(x, gate.shape[1]) * gate.unsqueeze(2)).view_as(x))
    monkeypatch.setattr(DoubleStreamBlock, "forward_cached",
                        lambda self, *args, outputs=True, **kw: full_cached(self, *args, outputs=True, **kw))
    monkeypatch.setattr(DoubleStreamBlock, "forward_text",
                        lambda self, *args, outputs=True, **kw: full_text(self, *args, outputs=True, **kw))
    unoptimised = tiny_pipeline.generate(request).frames

    assert optimised.shape == unoptimised.shape == (45, 48, 80, 3)
    difference = np.abs(optimised.astype(int) - unoptimised.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())
