"""The DiT's attention entry point: kernel choice, the FlashAttention layout, and the fall-back to SDPA.

The FlashAttention-3/4 packages need a GPU, so their place is taken here by stand-ins with the same
calling convention ([B, L, H, D] in and out, sometimes a tuple); what is tested is the worker's side:
which kernel it picks, that it hands the kernel the right views, and what happens when one fails.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from pipeline.dit import attention as attn

CUDA = torch.device("cuda")  # a device *description*: nothing here touches a GPU


def token_major_sdpa(q, k, v):
    """A FlashAttention stand-in: [B, L, H, D] tensors, unit stride on D required."""
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.fixture
def installed(monkeypatch):
    """Pretend the named FlashAttention families are installed with the given kernels."""
    loaded = {}
    monkeypatch.setattr(attn, "_loaded", loaded)

    def install(**kernels):
        for name in attn.FLASH_KERNELS:
            loaded[name] = kernels.get(name)
        return loaded

    return install


@pytest.fixture
def gpu_generation(monkeypatch):
    def set_major(major):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))

    return set_major


def make_qkv(b=2, heads=3, lq=37, lk=53, dim=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, lq, heads, dim, generator=g, dtype=dtype).transpose(1, 2)  # the DiT's q: a view
    cache = torch.randn(b, heads, lk + 9, dim, generator=g, dtype=dtype)  # K/V: slices of a cache
    return q, cache[:, :, 4:4 + lk], cache[:, :, 5:5 + lk]


@pytest.mark.parametrize("env, major, expected", [
    ("auto", 9, "fa4"),       # Hopper: FlashAttention-4 measured faster than cuDNN
    ("auto", 8, "sdpa"),      # Ampere: not measured, SDPA
    ("fa4", 8, "fa4"),        # asked for by name: used on any GPU
    ("sdpa", 9, "sdpa"),
    ("math", 9, "math"),
    ("FA4", 9, "fa4"),        # case-insensitive
])
def test_kernel_choice(monkeypatch, installed, gpu_generation, env, major, expected):
    installed(fa4=token_major_sdpa)
    gpu_generation(major)
    monkeypatch.setenv("WORLDPLAY_ATTENTION", env)
    assert attn.backend_name(CUDA) == expected


def test_fa3_is_preferred_and_missing_packages_mean_sdpa(monkeypatch, installed, gpu_generation):
    gpu_generation(9)
    monkeypatch.setenv("WORLDPLAY_ATTENTION", "auto")
    installed(fa3=token_major_sdpa, fa4=token_major_sdpa)
    assert attn.backend_name(CUDA) == "fa3"
    installed()
    assert attn.backend_name(CUDA) == "sdpa"
    monkeypatch.setenv("WORLDPLAY_ATTENTION", "fa3")
    assert attn.backend_name(CUDA) == "sdpa"


def test_cpu_always_uses_sdpa(monkeypatch, installed):
    installed(fa3=token_major_sdpa, fa4=token_major_sdpa)
    monkeypatch.setenv("WORLDPLAY_ATTENTION", "fa4")
    assert attn.backend_name(torch.device("cpu")) == "sdpa"
    assert attn.prepare(torch.device("cpu"), torch.bfloat16, heads=2, head_dim=8) == "sdpa"


def test_missing_package_is_reported_as_not_installed(monkeypatch):
    monkeypatch.setattr(attn, "_loaded", {})
    monkeypatch.setitem(attn.FLASH_KERNELS, "fa4", ("worldplay_no_such_module.cute", "flash_attn_func"))
    assert attn.flash_kernel("fa4") is None


@pytest.mark.parametrize("returns_tuple", [False, True])
def test_flash_layout_equals_sdpa_on_cache_slices(returns_tuple):
    def kernel(q, k, v):
        out = token_major_sdpa(q, k, v)
        return (out, torch.zeros(1)) if returns_tuple else out

    q, k, v = make_qkv()
    out = attn.flash_attention(kernel, q, k, v)
    assert out.shape == q.shape
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-6)


def run_as(monkeypatch, backend, q, k, v):
    monkeypatch.setattr(attn, "backend_name", lambda device=None: backend if attn._loaded.get(backend) else "sdpa")
    return attn.attention(q, k, v)


def test_attention_uses_the_flash_kernel_in_half_precision(monkeypatch, installed):
    calls = []

    def kernel(q, k, v):
        calls.append(q.shape)
        return token_major_sdpa(q, k, v)

    installed(fa4=kernel)
    q, k, v = make_qkv(dtype=torch.bfloat16)
    out = run_as(monkeypatch, "fa4", q, k, v)
    assert calls == [(2, 37, 3, 16)]  # [B, L, H, D]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_a_failing_kernel_falls_back_to_sdpa_for_good(monkeypatch, installed, caplog):
    calls = []

    def broken(q, k, v):
        calls.append(1)
        raise RuntimeError("unsupported architecture")

    loaded = installed(fa4=broken)
    q, k, v = make_qkv(dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="worldplay.attention"):
        first = run_as(monkeypatch, "fa4", q, k, v)
        second = run_as(monkeypatch, "fa4", q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert calls == [1] and loaded["fa4"] is None  # tried once, then SDPA for the rest of the process
    assert "fa4 attention failed" in caplog.text and "unsupported architecture" in caplog.text


def test_out_of_memory_is_not_a_kernel_failure(monkeypatch, installed):
    def oom(q, k, v):
        raise torch.OutOfMemoryError("CUDA out of memory")

    loaded = installed(fa4=oom)
    q, k, v = make_qkv(dtype=torch.bfloat16)
    with pytest.raises(torch.OutOfMemoryError):
        run_as(monkeypatch, "fa4", q, k, v)
    assert loaded["fa4"] is oom  # the kernel stays: the job failed on memory, not on the kernel


def test_prepare_runs_the_chosen_kernel_once_at_start(monkeypatch, installed, gpu_generation):
    gpu_generation(9)
    monkeypatch.setenv("WORLDPLAY_ATTENTION", "auto")
    shapes = []
    monkeypatch.setattr(attn, "attention", lambda q, k, v: shapes.append(q.shape) or q)
    monkeypatch.setattr(torch, "randn", lambda *size, device=None, dtype=None: torch.zeros(*size, dtype=dtype))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    installed(fa4=token_major_sdpa)
    assert attn.prepare(CUDA, torch.bfloat16, heads=16, head_dim=128) == "fa4"
    assert shapes == [(1, 16, 300, 128)]
    assert attn.prepare(CUDA, torch.float32, heads=16, head_dim=128) == "fa4"  # no half-precision call
    assert len(shapes) == 1
