"""PRoPE: projective positional encoding of camera poses inside attention.

For a token seen by a camera with world-to-camera matrix ``w2c`` and intrinsics ``K`` (principal
point zeroed, only the focal lengths kept), let ``P = lift(K0) @ w2c`` (4x4). Each head vector is split
into 4-dimensional sub-blocks ``x``; queries become ``P^T x``, keys and values ``P^{-1} x``, and the
attention output is mapped back with ``P o``. Relative camera geometry then enters the dot products
``q^T P_i P_j^{-1} k`` without any learned parameters.

The camera matrices are computed in float32 and applied in the activation dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _projection(viewmats: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P and P^{-1} for [..., 4, 4] w2c and [..., 3, 3] intrinsics (float32)."""
    w2c = viewmats.float()
    fx = intrinsics[..., 0, 0].float()
    fy = intrinsics[..., 1, 1].float()
    lift_k = torch.zeros(w2c.shape, dtype=torch.float32, device=w2c.device)
    lift_k[..., 0, 0] = fx
    lift_k[..., 1, 1] = fy
    lift_k[..., 2, 2] = 1.0
    lift_k[..., 3, 3] = 1.0
    lift_k_inv = torch.zeros_like(lift_k)
    lift_k_inv[..., 0, 0] = 1.0 / fx
    lift_k_inv[..., 1, 1] = 1.0 / fy
    lift_k_inv[..., 2, 2] = 1.0
    lift_k_inv[..., 3, 3] = 1.0
    rot_t = w2c[..., :3, :3].transpose(-1, -2)
    w2c_inv = torch.zeros_like(w2c)
    w2c_inv[..., :3, :3] = rot_t
    w2c_inv[..., :3, 3] = -(rot_t @ w2c[..., :3, 3:4]).squeeze(-1)
    w2c_inv[..., 3, 3] = 1.0
    return lift_k @ w2c, w2c_inv @ lift_k_inv


def _block_diagonal(m: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., 4, 4] -> [..., dim, dim] = diag(m, m, ..., m)."""
    eye = torch.eye(dim // 4, dtype=m.dtype, device=m.device)
    blocks = torch.einsum("ij,...kl->...ikjl", eye, m)
    return blocks.reshape(*m.shape[:-2], dim, dim)


@dataclass
class CameraEncoding:
    """Per-latent-frame PRoPE matrices, ready to apply to tokens laid out as [B, T*HW, H, D].

    Each matrix is stored transposed for right-multiplication of row vectors and expanded to the
    block-diagonal [D, D] form diag(M, ..., M): ``x @ right_q`` equals ``P^T x`` on every 4-dim
    sub-block of a head, and so on. One [*, D] x [D, D] GEMM per frame streams at memory speed, where
    a GEMM with K = 4 would not; the zeros add nothing.
    """

    right_q: torch.Tensor  # [B, T, D, D]  blocks of P
    right_kv: torch.Tensor  # [B, T, D, D] blocks of (P^{-1})^T
    right_o: torch.Tensor  # [B, T, D, D]  blocks of P^T

    @classmethod
    def create(
        cls, viewmats: torch.Tensor, intrinsics: torch.Tensor, dtype: torch.dtype, head_dim: int
    ) -> "CameraEncoding":
        p, p_inv = _projection(viewmats, intrinsics)
        return cls(
            right_q=_block_diagonal(p, head_dim).to(dtype),
            right_kv=_block_diagonal(p_inv.transpose(-1, -2), head_dim).to(dtype),
            right_o=_block_diagonal(p.transpose(-1, -2), head_dim).to(dtype),
        )

    @staticmethod
    def _apply(x: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        b, length, heads, dim = x.shape
        frames = right.shape[1]
        rows = x.reshape(b, frames, (length // frames) * heads, dim)
        return torch.matmul(rows, right).reshape(b, length, heads, dim)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.right_q)

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.right_kv)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.right_o)
