"""The AR K/V cache owns its bookkeeping: its size, the context it holds, the RoPE start of each pass.

A pass that does not fit the cache (wrong RoPE start, too many latents, another latent grid) raises
before anything is written, so a mistake can no longer change the output silently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.dit.ar_cache import CONTEXT_ROPE_START, ARCache, ARCacheLayout
from pipeline.dit.config import WorldPlayConfig
from pipeline.dit.transformer import WorldPlayTransformer

H, W = 2, 3
N_CTX, CHUNK = 3, 4


@pytest.fixture(scope="module")
def model() -> WorldPlayTransformer:
    torch.manual_seed(0)
    return WorldPlayTransformer(WorldPlayConfig.tiny()).eval()


def condition(model: WorldPlayTransformer):
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    return model.embed_condition(
        torch.randn(1, 6, cfg.text_dim, generator=g), torch.tensor([[1, 1, 1, 1, 0, 0]]),
        torch.randn(1, 3, cfg.byt5_dim, generator=g), torch.tensor([[1, 0, 0]]),
        torch.randn(1, 4, cfg.vision_dim, generator=g), 0.0,
    )


def video(model: WorldPlayTransformer, frames: int, rope_start: int, seed: int, grid=(H, W), timestep=500.0):
    g = torch.Generator().manual_seed(seed)
    viewmats = torch.eye(4).repeat(1, frames, 1, 1)
    viewmats[..., 0, 3] = 0.1 * torch.arange(frames)
    intrinsics = torch.tensor([[0.6, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1.0]]).repeat(1, frames, 1, 1)
    return model.embed_video(
        torch.randn(1, model.config.in_channels, frames, *grid, generator=g), torch.full((frames,), timestep),
        torch.arange(frames) % 81, viewmats, intrinsics, rope_start=rope_start,
    )


def filled_cache(model: WorldPlayTransformer) -> ARCache:
    cache = model.ar_start(condition(model), ARCacheLayout((H, W), max_context_latents=N_CTX, chunk_latents=CHUNK))
    model.ar_context_pass(cache, video(model, N_CTX, CONTEXT_ROPE_START, seed=2, timestep=14.0))
    return cache


def snapshot(cache: ARCache) -> list[torch.Tensor]:
    return [t.clone() for t in cache.keys + cache.values]


def assert_unchanged(cache: ARCache, before: list[torch.Tensor]) -> None:
    end = cache.text_len + cache.context_len  # what the next chunk pass reads
    for now, then in zip(cache.keys + cache.values, before):
        assert torch.equal(now[:, :, :end], then[:, :, :end])


def test_the_cache_is_sized_from_its_layout_and_hands_out_the_chunk_rope_start(model):
    with torch.no_grad():
        cache = model.ar_start(condition(model), ARCacheLayout((H, W), max_context_latents=N_CTX, chunk_latents=CHUNK))
        assert cache.text_len == 4 + 1 + 4  # vision + valid byT5 + valid text
        assert cache.capacity == cache.text_len + (N_CTX + CHUNK) * H * W
        cfg = model.config
        assert [tuple(k.shape) for k in cache.keys] == [(2, cfg.num_heads, cache.capacity, cfg.head_dim)] * cfg.num_layers
        assert cache.heads == cfg.num_heads and cache.nbytes() == 2 * sum(k.numel() * 4 for k in cache.keys)
        assert (cache.context_latents, cache.context_len, cache.chunk_rope_start) == (0, 0, 0)
        model.ar_context_pass(cache, video(model, 2, 0, seed=2, timestep=14.0))
        assert (cache.context_latents, cache.context_len, cache.chunk_rope_start) == (2, 2 * H * W, 2)
        model.ar_clear_context(cache)
        assert (cache.context_latents, cache.context_len, cache.chunk_rope_start) == (0, 0, 0)


def test_the_cache_takes_its_heads_from_the_keys_it_is_given():
    """A head-sharded model hands the cache only its local heads; the buffers follow."""
    cache = ARCache(ARCacheLayout((2, 2), max_context_latents=1, chunk_latents=1), text_len=3)
    keys, values = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    cache.add_layer(keys, values)
    assert cache.heads == 1 and cache.keys[0].shape == (2, 1, 3 + 2 * 4, 8)
    assert torch.equal(cache.keys[0][1, :, :3], keys) and torch.equal(cache.values[0][0, :, :3], values)
    with pytest.raises(ValueError, match="3 text tokens"):
        cache.add_layer(torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="invalid AR cache layout"):
        ARCacheLayout((0, 2), max_context_latents=1, chunk_latents=1)


def test_a_chunk_pass_with_the_wrong_rope_start_raises_before_writing(model):
    with torch.no_grad():
        cache = filled_cache(model)
        expected = model.ar_chunk_pass(cache, video(model, CHUNK, cache.chunk_rope_start, seed=3))
        before = snapshot(cache)
        for wrong in (0, N_CTX - 1, N_CTX + 1):
            with pytest.raises(ValueError, match=f"RoPE start {wrong}; it must be {N_CTX}"):
                model.ar_chunk_pass(cache, video(model, CHUNK, wrong, seed=3))
        assert_unchanged(cache, before)
        assert torch.equal(model.ar_chunk_pass(cache, video(model, CHUNK, N_CTX, seed=3)), expected)


def test_a_context_pass_with_a_nonzero_rope_start_raises_and_keeps_the_old_context(model):
    with torch.no_grad():
        cache = filled_cache(model)
        expected = model.ar_chunk_pass(cache, video(model, CHUNK, N_CTX, seed=3))
        before = snapshot(cache)
        with pytest.raises(ValueError, match="context pass has RoPE start 2; it must be 0"):
            model.ar_context_pass(cache, video(model, 2, 2, seed=4, timestep=14.0))
        assert cache.context_latents == N_CTX
        assert_unchanged(cache, before)
        assert torch.equal(model.ar_chunk_pass(cache, video(model, CHUNK, N_CTX, seed=3)), expected)


def test_passes_larger_than_the_layout_or_on_another_grid_raise(model):
    with torch.no_grad():
        cache = filled_cache(model)
        before = snapshot(cache)
        with pytest.raises(ValueError, match=r"AR cache holds .* this context pass has 4 latents, more than the 3"):
            model.ar_context_pass(cache, video(model, N_CTX + 1, 0, seed=5, timestep=14.0))
        assert cache.context_latents == N_CTX
        with pytest.raises(ValueError, match=r"AR cache holds .* this chunk pass has 5 latents, more than the 4"):
            model.ar_chunk_pass(cache, video(model, CHUNK + 1, N_CTX, seed=5))
        with pytest.raises(ValueError, match="laid out for 2x3-token latents; this chunk pass has 3x2"):
            model.ar_chunk_pass(cache, video(model, CHUNK, N_CTX, seed=5, grid=(3, 2)))
        assert_unchanged(cache, before)
        with pytest.raises(ValueError, match="condition latents, mask] = 65 channels; got 64"):
            model.embed_video(torch.zeros(1, 64, 1, H, W), torch.zeros(1), torch.zeros(1), torch.eye(4)[None, None],
                              torch.eye(3)[None, None])


def test_the_rollouts_caches_hold_the_budget_it_used_to_compute_and_fill_it(tiny_pipeline, monkeypatch):
    """The AR rollout's caches have exactly the capacity the rollout used to compute itself
    (text + tokens per latent x (largest context + one chunk)), and its largest context fills it."""
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest
    from pipeline.generation.memory import MEMORY_SIZE
    from pipeline.generation.rollout import AR_CHUNK_LATENTS

    caches, contexts = [], []
    real_start, real_context = WorldPlayTransformer.ar_start, WorldPlayTransformer.ar_context_pass

    def ar_start(self, cond, layout):
        caches.append(real_start(self, cond, layout))
        return caches[-1]

    def ar_context_pass(self, cache, ctx_video):
        real_context(self, cache, ctx_video)
        contexts.append(cache.context_latents)

    monkeypatch.setattr(WorldPlayTransformer, "ar_start", ar_start)
    monkeypatch.setattr(WorldPlayTransformer, "ar_context_pass", ar_context_pass)
    ys, xs = np.mgrid[0:90, 0:160]
    image = Image.fromarray(np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8))
    num_latents = 28  # more than memory_size: the context is capped
    request = GenerationRequest(prompt="a quiet harbour", image=image, camera=parse_pose(f"w-{num_latents - 1}"),
                                seed=1, num_inference_steps=1)
    tiny_pipeline.generate(request)
    assert len(caches) == 1
    cache = caches[0]
    tokens_per_latent = cache.layout.tokens_per_latent
    assert tokens_per_latent == 3 * 5  # 48x80 frames of the tiny bucket
    old_budget = tokens_per_latent * (min(num_latents, MEMORY_SIZE) + AR_CHUNK_LATENTS)
    assert cache.capacity == cache.text_len + old_budget
    assert all(k.shape[2] == cache.capacity for k in cache.keys + cache.values)
    assert max(contexts) == MEMORY_SIZE == cache.layout.max_context_latents

