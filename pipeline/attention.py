"""Attention kernels for the DiT.

Every call is mask-free: padded text tokens are stripped before they reach a block, and the AR
rollout's structure (text, context, chunk) is expressed by which keys are passed, never by a dense
L x L mask, so the fused kernels (FlashAttention-3 when installed, else PyTorch SDPA's flash / cuDNN /
memory-efficient backends) stay usable.

Layout: ``q`` [B, H, Lq, D], ``k``/``v`` [B, H, Lk, D] -> [B, H, Lq, D].
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger("worldplay.attention")

_BACKEND_ENV = "WORLDPLAY_ATTENTION"  # auto | sdpa | fa3 | math


def _load_fa3():
    try:  # FlashAttention-3 (Hopper) ships as flash_attn_interface
        from flash_attn_interface import flash_attn_func  # type: ignore

        return flash_attn_func
    except Exception:  # noqa: BLE001 - optional accelerator package
        return None


_FA3 = None
_FA3_CHECKED = False


def backend_name(device: torch.device | None = None) -> str:
    """The kernel family `attention` will use on `device` (for logs and the health report)."""
    choice = os.environ.get(_BACKEND_ENV, "auto").lower()
    if choice == "math":
        return "math"
    if device is not None and device.type == "cuda" and choice in ("auto", "fa3") and _fa3() is not None:
        return "fa3"
    return "sdpa"


def _fa3():
    global _FA3, _FA3_CHECKED
    if not _FA3_CHECKED:
        _FA3 = _load_fa3()
        _FA3_CHECKED = True
    return _FA3


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over all keys, scale 1/sqrt(D)."""
    backend = backend_name(q.device)
    if backend == "fa3" and q.dtype in (torch.float16, torch.bfloat16):
        out = _fa3()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)
    if backend == "math":
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)
