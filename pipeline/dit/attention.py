"""Attention kernels for the DiT.

Every call is mask-free: padded text tokens are stripped before they reach a block, and the AR
rollout's structure (text, context, chunk) is expressed by which keys are passed, never by a dense
L x L mask, so the fused kernels (FlashAttention-3/4 when installed, else PyTorch SDPA's cuDNN / flash /
memory-efficient backends) stay usable.

Layout: ``q`` [B, H, Lq, D], ``k``/``v`` [B, H, Lk, D] -> [B, H, Lq, D].

``WORLDPLAY_ATTENTION`` picks the kernel family: ``auto`` (the families in ``AUTO_ORDER`` that are
installed, else SDPA), ``sdpa``, ``fa3`` (``flash_attn_interface``), ``fa4`` (``flash_attn.cute``, the
``flash-attn-4`` package) or ``math`` (a plain float32 reference). A FlashAttention kernel that raises
(an unsupported GPU or shape) is logged once and replaced by SDPA for the rest of the process; running
out of memory is not such a failure and propagates.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger("worldplay.attention")

_BACKEND_ENV = "WORLDPLAY_ATTENTION"  # auto | sdpa | fa3 | fa4 | math

# kernel family -> (module, function); both take and return [B, L, H, D]
FLASH_KERNELS = {
    "fa3": ("flash_attn_interface", "flash_attn_func"),
    "fa4": ("flash_attn.cute", "flash_attn_func"),
}
# what `auto` tries, in order, before SDPA, and on which GPU generations (compute capability major):
# FlashAttention-4 measured 682-750 TFLOP/s against cuDNN's 591-614 on the DiT's AR shapes on an H100
# (docs/PERFORMANCE.md, "Attention kernels"); elsewhere it is only used when asked for by name.
AUTO_ORDER = ("fa3", "fa4")
AUTO_CAPABILITIES = {"fa3": (9,), "fa4": (9,)}

_loaded: dict[str, Optional[Callable]] = {}


def flash_kernel(name: str) -> Optional[Callable]:
    """The FlashAttention function of family `name`, or None when it is not installed (or failed)."""
    if name not in _loaded:
        module_name, attr = FLASH_KERNELS[name]
        try:
            _loaded[name] = getattr(importlib.import_module(module_name), attr)
        except Exception:  # noqa: BLE001 - optional accelerator package: absent or unimportable
            _loaded[name] = None
    return _loaded[name]


def backend_name(device: torch.device | None = None) -> str:
    """The kernel family `attention` will use on `device` (for logs, the bench and the health report)."""
    choice = os.environ.get(_BACKEND_ENV, "auto").strip().lower()
    if choice == "math":
        return "math"
    if device is not None and device.type == "cuda":
        if choice == "auto":
            major = torch.cuda.get_device_capability(device)[0]
            candidates = tuple(name for name in AUTO_ORDER if major in AUTO_CAPABILITIES[name])
        else:
            candidates = (choice,) if choice in FLASH_KERNELS else ()
        for name in candidates:
            if flash_kernel(name) is not None:
                return name
    return "sdpa"


def prepare(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int) -> str:
    """Choose the kernel for `device` and run it once on a small problem; returns its name.

    A FlashAttention-4 kernel is compiled on its first call (with the DSL's first import, 6.3 s on an
    H100; once per process, for every sequence length): this moves that cost, and the discovery of a kernel that cannot run on
    this GPU (which falls back to SDPA), from the first job to the worker's start."""
    if backend_name(device) in FLASH_KERNELS and dtype in (torch.float16, torch.bfloat16):
        q, k, v = (torch.randn(1, heads, 300, head_dim, device=device, dtype=dtype) for _ in range(3))
        attention(q, k, v)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return backend_name(device)


def flash_attention(kernel: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Run a FlashAttention-style `kernel` ([B, L, H, D] in and out) on [B, H, L, D] tensors.

    The transposes are views: the DiT's q and the K/V cache slices are token-major underneath with a
    unit stride on D, which is all these kernels ask of their inputs."""
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    if isinstance(out, tuple):  # some versions return (out, softmax_lse)
        out = out[0]
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over all keys, scale 1/sqrt(D)."""
    backend = backend_name(q.device)
    if backend in FLASH_KERNELS and q.dtype in (torch.float16, torch.bfloat16):
        try:
            return flash_attention(flash_kernel(backend), q, k, v)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a GPU or shape the kernel does not support
            logger.warning("%s attention failed (%s: %s); using PyTorch SDPA from now on",
                           backend, type(exc).__name__, exc)
            _loaded[backend] = None
    if backend == "math":
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)
