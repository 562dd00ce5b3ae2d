"""The WorldPlay DiT: HunyuanVideo-1.5 480p i2v double-stream transformer with camera control.

Module and parameter names follow the official checkpoints, so a state dict loads strictly with no
key mapping. On top of the base network, WorldPlay adds

* ``action_in``: an embedding of the discrete camera action (0..80) added to the timestep embedding;
* per-latent-frame modulation: timestep + action are embedded per latent frame and broadcast to the
  frame's tokens (computed once per frame, not once per token);
* a second image-attention branch per block whose q/k/v carry PRoPE camera encoding
  (:mod:`pipeline.dit.prope`), projected by ``img_attn_prope_proj`` and added to the RoPE branch;
* a separate text timestep (``t`` in bidirectional mode, ``0`` in AR mode);
* RoPE temporal positions that restart per call (context latents first, current chunk after).

Two ways to run it:

* :meth:`WorldPlayTransformer.forward` -- bidirectional: image and text tokens attend jointly.
* the AR passes -- :meth:`ar_start` runs the text stream alone and keeps its per-layer K/V in an
  :class:`~pipeline.dit.ar_cache.ARCache` sized from an :class:`~pipeline.dit.ar_cache.ARCacheLayout`;
  :meth:`ar_context_pass` runs the selected clean context latents (which attend to text + themselves)
  and stores their K/V; :meth:`ar_chunk_pass` runs the current chunk against [text K/V, context K/V,
  its own K/V]. The cache is one preallocated buffer per layer; nothing is concatenated per step. It
  tracks what it holds and checks each pass's size and RoPE start (``cache.chunk_rope_start``).

Padded text tokens are stripped before the blocks and no attention mask is ever built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dit.ar_cache import ARCache, ARCacheLayout
from pipeline.dit.attention import attention
from pipeline.dit.config import WorldPlayConfig
from pipeline.dit.parallel import LOCAL, layout_for
from pipeline.dit.prope import CameraEncoding

# --------------------------------------------------------------------------------------- layers


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] -> [N, dim] float32, cosines first then sines (the checkpoints' convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar (timestep or action id) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = activation
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def rms_normalize(x: torch.Tensor, eps: float, fused: bool) -> torch.Tensor:
    """x / rms(x) over the last axis, statistics in float32, result in x's dtype.

    `fused`: PyTorch's ``rms_norm``, one kernel on CUDA (PyTorch >= 2.8; ~9x its unfused form in
    PyTorch's own benchmark, pytorch/pytorch#153666) where the explicit form runs ~6 kernels over a
    float32 copy. On the CPU that op is itself a composite and slower than the explicit form, so the
    CPU keeps the explicit one. Both round once, after normalising.
    """
    if fused:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the weight multiplies the rounded result, as in the checkpoints' reference code
        return rms_normalize(x, self.eps, fused=x.device.type == "cuda") * self.weight


class Modulation(nn.Module):
    """SiLU -> Linear producing `factor` vectors of width `hidden` (shift/scale/gate sets)."""

    def __init__(self, hidden: int, factor: int):
        super().__init__()
        self.act = nn.SiLU()
        self.linear = nn.Linear(hidden, factor * hidden)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        return self.linear(self.act(vec))


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free LayerNorm; statistics in float32 (PyTorch's kernels accumulate half types in fp32)."""
    if x.device.type == "cuda":
        return F.layer_norm(x, (x.shape[-1],), eps=eps)
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x)


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """View tokens [B, T*S, C] as [B, T, S, C]."""
    b, length, c = x.shape
    return x.view(b, frames, length // frames, c)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, per frame, in one fused multiply-add kernel (not a product then a sum).

    x [B, T*S, C]; shift/scale [B, T, C] per frame (T=1 for text).
    """
    frames = shift.shape[1]
    return torch.addcmul(shift.unsqueeze(2), per_frame(x, frames), 1 + scale.unsqueeze(2)).view_as(x)


def add_gated(residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """residual + x * gate, per frame, in one kernel. residual/x [B, T*S, C]; gate [B, T, C]."""
    frames = gate.shape[1]
    return torch.addcmul(per_frame(residual, frames), per_frame(x, frames), gate.unsqueeze(2)).view_as(residual)


# ----------------------------------------------------------------------------------------- RoPE


@lru_cache(maxsize=32)
def _rope_table(axes: tuple[int, int, int], theta: float, start: int, t: int, h: int, w: int, device: str):
    """cos and sin [L, D/2] (float32) of every token's rotation angles, axes (t, h, w) concatenated."""
    grids = torch.meshgrid(
        torch.arange(start, start + t, dtype=torch.float32),
        torch.arange(h, dtype=torch.float32),
        torch.arange(w, dtype=torch.float32),
        indexing="ij",
    )
    cos, sin = [], []
    for dim, grid in zip(axes, grids):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
        angles = torch.outer(grid.reshape(-1), freqs)
        cos.append(angles.cos())
        sin.append(angles.sin())
    cos, sin = torch.cat(cos, 1), torch.cat(sin, 1)
    return cos.to(device), sin.to(device), torch.complex(cos, sin).to(device)


@dataclass
class Rope:
    """Rotation of adjacent channel pairs (x[2i], x[2i+1]) by each token's angle i, in float32."""

    cos: torch.Tensor  # [L, D/2] float32
    sin: torch.Tensor
    cis: torch.Tensor  # [L, D/2] complex64: cos + i sin

    @classmethod
    def create(cls, config: WorldPlayConfig, start: int, t: int, h: int, w: int, device: torch.device) -> "Rope":
        return cls(*_rope_table(tuple(config.rope_axes), float(config.rope_theta), start, t, h, w, str(device)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, L, H, D] as one complex multiply: (a + ib)(cos + i sin).

        One read and one write of the float32 copy, where the real-valued form below makes about
        six passes (negate, stack, two products, sum): 2.5x (bf16) to 3.9x (fp32) faster on the CPU
        at the AR chunk's shape; the same values to float32 rounding.
        """
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * self.cis[None, :, None, :]).flatten(-2).type_as(x)

    def rotate_real(self, x: torch.Tensor) -> torch.Tensor:
        """The same rotation in real arithmetic: what ``WORLDPLAY_COMPILE=1`` compiles (inductor fuses
        it into one kernel, and does not generate code for complex tensors)."""
        xf = x.float()
        pairs = xf.unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        cos = self.cos[None, :, None, :]
        sin = self.sin[None, :, None, :]
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------- blocks


class DoubleStreamBlock(nn.Module):
    def __init__(self, config: WorldPlayConfig):
        super().__init__()
        c, mlp = config.hidden_size, config.mlp_hidden_size
        self.heads = config.num_heads
        self.head_dim = config.head_dim
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(c, 6))
            setattr(self, f"{stream}_attn_q", nn.Linear(c, c))
            setattr(self, f"{stream}_attn_k", nn.Linear(c, c))
            setattr(self, f"{stream}_attn_v", nn.Linear(c, c))
            setattr(self, f"{stream}_attn_q_norm", RMSNorm(self.head_dim))
            setattr(self, f"{stream}_attn_k_norm", RMSNorm(self.head_dim))
            setattr(self, f"{stream}_attn_proj", nn.Linear(c, c))
            setattr(self, f"{stream}_mlp", MLP(c, mlp, nn.GELU(approximate="tanh")))
        self.img_attn_prope_proj = nn.Linear(c, c)

    # -- pieces shared by every mode

    def _qkv(self, stream: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, queries: bool = True):
        """Normalised q, k and v [B, L, H, D]; q is None when `queries` is False (K/V-only passes)."""
        h = modulate(layer_norm(x), shift, scale)
        b, length, _ = h.shape
        k = getattr(self, f"{stream}_attn_k")(h).view(b, length, self.heads, self.head_dim)
        v = getattr(self, f"{stream}_attn_v")(h).view(b, length, self.heads, self.head_dim)
        k = getattr(self, f"{stream}_attn_k_norm")(k).to(v.dtype)
        if not queries:
            return None, k, v
        q = getattr(self, f"{stream}_attn_q")(h).view(b, length, self.heads, self.head_dim)
        q = getattr(self, f"{stream}_attn_q_norm")(q).to(v.dtype)
        return q, k, v

    def _finish(self, stream: str, x: torch.Tensor, attn_out: torch.Tensor, mods: tuple[torch.Tensor, ...]):
        _, _, gate1, shift2, scale2, gate2 = mods
        x = add_gated(x, attn_out, gate1)
        mlp = getattr(self, f"{stream}_mlp")
        return add_gated(x, mlp(modulate(layer_norm(x), shift2, scale2)), gate2)

    @staticmethod
    def _heads_first(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)

    def _image_update(self, img, img_mods, attn_rope, prope_out):
        """attn_rope / prope_out [B, L, H, D] (PRoPE's output map already applied)."""
        combined = self.img_attn_proj(attn_rope.flatten(2)) + self.img_attn_prope_proj(prope_out.flatten(2))
        return self._finish("img", img, combined, img_mods)

    # -- bidirectional: joint attention of image and text tokens

    def forward(self, img, txt, vec_img, vec_txt, rope: Rope, camera: CameraEncoding, img_layout=LOCAL,
                txt_layout=LOCAL):
        """`img_layout` / `txt_layout` (:mod:`pipeline.dit.parallel`): with several ranks, img and txt are this
        rank's token slices and attention runs on all tokens of this rank's heads."""
        img_mods = self.img_mod(vec_img).chunk(6, dim=-1)  # each [B, T, C]
        txt_mods = self.txt_mod(vec_txt).unsqueeze(1).chunk(6, dim=-1)  # each [B, 1, C]
        q, k, v = img_layout.to_heads(*self._qkv("img", img, img_mods[0], img_mods[1]))
        tq, tk, tv = txt_layout.to_heads(*self._qkv("txt", txt, txt_mods[0], txt_mods[1]))
        n_img = q.shape[1]

        keys_txt, values_txt = self._heads_first(tk), self._heads_first(tv)
        joint = attention(
            self._heads_first(torch.cat([rope(q), tq], 1)),
            torch.cat([self._heads_first(rope(k)), keys_txt], 2),
            torch.cat([self._heads_first(v), values_txt], 2),
        )
        joint = joint.transpose(1, 2)  # [B, L, H, D]
        # PRoPE branch: only the image queries are needed (its text output is discarded).
        prope = attention(
            self._heads_first(camera.queries(q)),
            torch.cat([self._heads_first(camera.keys_values(k)), keys_txt], 2),
            torch.cat([self._heads_first(camera.keys_values(v)), values_txt], 2),
        )
        attn_rope, prope_out = img_layout.to_seq(joint[:, :n_img], camera.outputs(prope.transpose(1, 2)))
        (attn_txt,) = txt_layout.to_seq(joint[:, n_img:])
        img = self._image_update(img, img_mods, attn_rope, prope_out)
        txt = self._finish("txt", txt, self.txt_attn_proj(attn_txt.flatten(2)), txt_mods)
        return img, txt

    # -- AR: text alone, then image tokens against the cache

    def forward_text(self, txt, vec_txt, outputs: bool = True, layout=LOCAL):
        """Text self-attention only; returns the updated text and its K/V [B, H, L, D] (with several
        ranks: this rank's text slice, and all text tokens' K/V of this rank's heads).

        With `outputs=False` (the last layer: nothing reads its output) only the K/V are computed and
        the text comes back as None.
        """
        txt_mods = self.txt_mod(vec_txt).unsqueeze(1).chunk(6, dim=-1)
        tq, tk, tv = layout.to_heads(*self._qkv("txt", txt, txt_mods[0], txt_mods[1], queries=outputs))
        keys, values = self._heads_first(tk), self._heads_first(tv)
        if not outputs:
            return None, keys, values
        (out,) = layout.to_seq(attention(self._heads_first(tq), keys, values).transpose(1, 2))
        return self._finish("txt", txt, self.txt_attn_proj(out.flatten(2)), txt_mods), keys, values

    def forward_cached(self, img, vec_img, rope: Rope, camera: CameraEncoding, keys, values, offset: int,
                       outputs: bool = True, layout=LOCAL):
        """Image tokens attend to cache[:offset] + themselves; their K/V are written at `offset`.

        `keys`/`values` are this layer's [2, H, capacity, D] buffers (batch 1; with several ranks, this
        rank's H/N heads, and `img` is this rank's token slice). With `outputs=False`
        (the last layer of a context pass, whose output nothing reads) only the K/V are computed and
        written, and None is returned: no queries, attention, projections or MLP.
        """
        img_mods = self.img_mod(vec_img).chunk(6, dim=-1)
        q, k, v = layout.to_heads(*self._qkv("img", img, img_mods[0], img_mods[1], queries=outputs))
        n = k.shape[1]
        end = offset + n
        keys[0, :, offset:end] = rope(k)[0].transpose(0, 1)
        keys[1, :, offset:end] = camera.keys_values(k)[0].transpose(0, 1)
        values[0, :, offset:end] = v[0].transpose(0, 1)
        values[1, :, offset:end] = camera.keys_values(v)[0].transpose(0, 1)
        if not outputs:
            return None
        queries = torch.cat([rope(q), camera.queries(q)], 0).transpose(1, 2)  # [2, H, n, D]
        out = attention(queries, keys[:, :, :end], values[:, :, :end]).transpose(1, 2)  # [2, n, H, D]
        attn_rope, prope_out = layout.to_seq(out[:1], camera.outputs(out[1:]))
        return self._image_update(img, img_mods, attn_rope, prope_out)


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden, 3 * hidden)
        self.self_attn_proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = MLP(hidden, mlp_hidden, nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        b, length, width = x.shape
        qkv = self.self_attn_qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        out = attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + self.self_attn_proj(out) * gate_attn
        return x + self.mlp(self.norm2(x)) * gate_mlp


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_hidden: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(IndividualTokenRefinerBlock(hidden, heads, mlp_hidden) for _ in range(depth))


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class SingleTokenRefiner(nn.Module):
    """Refines the (unpadded) Qwen hidden states, conditioned on the text timestep and their mean."""

    def __init__(self, config: WorldPlayConfig):
        super().__init__()
        c = config.hidden_size
        self.input_embedder = nn.Linear(config.text_dim, c)
        self.t_embedder = TimestepEmbedder(c, config.timestep_embed_dim)
        self.c_embedder = TextProjection(config.text_dim, c)
        self.individual_token_refiner = IndividualTokenRefiner(
            c, config.num_heads, config.refiner_mlp_hidden_size, config.refiner_depth
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pooled = x.float().mean(dim=1).to(x.dtype)
        c = self.t_embedder(t) + self.c_embedder(pooled)
        h = self.input_embedder(x)
        for block in self.individual_token_refiner.blocks:
            h = block(h, c)
        return h


class ByT5Mapper(nn.Module):
    def __init__(self, config: WorldPlayConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.byt5_dim)
        self.fc1 = nn.Linear(config.byt5_dim, config.byt5_hidden_size)
        self.fc2 = nn.Linear(config.byt5_hidden_size, config.byt5_out_size)
        self.fc3 = nn.Linear(config.byt5_out_size, config.hidden_size)
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn(self.fc2(self.act_fn(self.fc1(self.layernorm(x))))))


class VisionProjection(nn.Module):
    def __init__(self, config: WorldPlayConfig):
        super().__init__()
        d, c = config.vision_dim, config.hidden_size
        self.proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, c), nn.LayerNorm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchEmbed(nn.Module):
    """1x1x1 patches: a per-token linear map of the 2*latent+1 input channels (kept as Conv3d weights)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, ch)
        return F.linear(tokens, self.proj.weight.view(self.proj.weight.shape[0], ch), self.proj.bias)


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x), shift, scale))


# --------------------------------------------------------------------------------- compilation

_COMPILED = False
_EAGER: dict[str, object] = {}


def enable_compile() -> bool:
    """Compile the elementwise-heavy parts of every block with torch.compile (process-wide, once).

    Attention stays on the fused SDPA kernels; what compiles is the layer-norm / modulation / QK-norm /
    projection / RoPE / PRoPE / gating chains around it, which are memory-bound in eager mode. The
    functions are compiled at class level, so the 54 blocks share one set of graphs (parameters are
    graph inputs). Returns False where torch.compile is unavailable.
    """
    global _COMPILED
    if _COMPILED:
        return True
    if not hasattr(torch, "compile"):
        return False
    options = {"dynamic": True}
    _EAGER.update(
        qkv=DoubleStreamBlock._qkv, finish=DoubleStreamBlock._finish, rope=Rope.__call__,
        camera=CameraEncoding.__dict__["_apply"],
    )
    DoubleStreamBlock._qkv = torch.compile(DoubleStreamBlock._qkv, **options)
    DoubleStreamBlock._finish = torch.compile(DoubleStreamBlock._finish, **options)
    Rope.__call__ = torch.compile(Rope.rotate_real, **options)
    CameraEncoding._apply = staticmethod(torch.compile(CameraEncoding._apply, **options))
    _COMPILED = True
    return True


def disable_compile() -> None:
    """Restore the eager implementations (tests compare both paths in one process)."""
    global _COMPILED
    if not _COMPILED:
        return
    DoubleStreamBlock._qkv = _EAGER["qkv"]
    DoubleStreamBlock._finish = _EAGER["finish"]
    Rope.__call__ = _EAGER["rope"]
    CameraEncoding._apply = _EAGER["camera"]
    _COMPILED = False


# ---------------------------------------------------------------------------------- the model


@dataclass
class ConditionTokens:
    """Conditioning tokens after projection: [SigLIP, valid byT5, valid Qwen] and the text modulation."""

    tokens: torch.Tensor  # [1, Lc, C]
    vec: torch.Tensor  # [1, C]


@dataclass
class VideoTokens:
    """One call's image tokens and their per-frame conditioning."""

    tokens: torch.Tensor  # [B, T*h*w, C]
    vec: torch.Tensor  # [B, T, C] timestep + action embedding per latent frame
    rope: Rope
    camera: CameraEncoding
    shape: tuple[int, int, int]  # (T, h, w)
    rope_start: int  # temporal RoPE position of the first latent


class TransformerBase(nn.Module):
    """What the WorldPlay DiT and the SR transformer share: their input layers under the published names, and
    dtype and device (those of their final layer)."""

    def _build_inputs(self, config: WorldPlayConfig, in_channels: int) -> None:
        """Patch embedding, text refiner, byT5 mapper, SigLIP projection and timestep embedder, in this order."""
        c = config.hidden_size
        self.img_in = PatchEmbed(in_channels, c)
        self.txt_in = SingleTokenRefiner(config)
        self.byt5_in = ByT5Mapper(config)
        self.vision_in = VisionProjection(config)
        self.time_in = TimestepEmbedder(c, config.timestep_embed_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.final_layer.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.final_layer.linear.weight.device


class WorldPlayTransformer(TransformerBase):
    def __init__(self, config: WorldPlayConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self._build_inputs(config, config.in_channels)
        self.action_in = TimestepEmbedder(c, config.timestep_embed_dim)
        self.cond_type_embedding = nn.Embedding(3, c)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(config) for _ in range(config.num_layers))
        self.final_layer = FinalLayer(c, config.out_channels)
        # pipeline.dit.parallel.SequenceParallel when the worker runs several ranks (set by the pipeline)
        self.sequence_parallel = None

    # -- conditioning

    def embed_condition(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        byt5: torch.Tensor,
        byt5_mask: torch.Tensor,
        vision: torch.Tensor,
        timestep_txt: float | torch.Tensor,
    ) -> ConditionTokens:
        """Project one sample's encoder outputs into [vision, byT5, text] tokens, padding removed.

        text [1, Lt, text_dim] + mask [1, Lt]; byt5 [1, Lb, byt5_dim] + mask [1, Lb];
        vision [1, Lv, vision_dim]. Only tokens whose mask is set are kept.
        """
        if text.shape[0] != 1:
            raise ValueError("embed_condition takes one sample; run CFG branches separately")
        dtype, device = self.dtype, self.device
        t_txt = torch.as_tensor(timestep_txt, dtype=torch.float32, device=device).reshape(1)
        text_valid = text[0][text_mask[0].bool()].unsqueeze(0).to(device, dtype)
        byt5_valid = byt5[0][byt5_mask[0].bool()].unsqueeze(0).to(device, dtype)
        type_emb = self.cond_type_embedding.weight
        parts = [self.vision_in(vision.to(device, dtype)) + type_emb[2]]
        if byt5_valid.shape[1]:
            parts.append(self.byt5_in(byt5_valid) + type_emb[1])
        parts.append(self.txt_in(text_valid, t_txt) + type_emb[0])
        return ConditionTokens(tokens=torch.cat(parts, dim=1), vec=self.time_in(t_txt))

    def embed_video(
        self,
        latent_model_input: torch.Tensor,
        timesteps: torch.Tensor,
        actions: torch.Tensor,
        viewmats: torch.Tensor,
        intrinsics: torch.Tensor,
        rope_start: int = 0,
    ) -> VideoTokens:
        """Image tokens and per-frame conditioning of T latent frames.

        latent_model_input [B, 2*latent+1, T, h, w]: the noisy latents, the condition latents and the
        condition mask, concatenated along channels; timesteps/actions [B, T]; viewmats [B, T, 4, 4];
        intrinsics [B, T, 3, 3]; rope_start: temporal RoPE position of the first frame (0, except for
        an AR chunk pass: ``cache.chunk_rope_start``).
        """
        b, channels, t, h, w = latent_model_input.shape
        if channels != self.config.in_channels:
            raise ValueError(
                f"embed_video takes [noisy latents, condition latents, mask] = {self.config.in_channels} "
                f"channels; got {channels}"
            )
        dtype, device = self.dtype, self.device
        tokens = self.img_in(latent_model_input.to(device, dtype))
        timesteps = torch.as_tensor(timesteps, device=device).float().expand(b, t)
        actions = torch.as_tensor(actions, device=device).float().expand(b, t)
        vec = self.time_in(timesteps.reshape(-1)) + self.action_in(actions.reshape(-1))
        return VideoTokens(
            tokens=tokens,
            vec=vec.view(b, t, -1),
            rope=Rope.create(self.config, rope_start, t, h, w, device),
            camera=CameraEncoding.create(
                viewmats.to(device).expand(b, t, 4, 4), intrinsics.to(device).expand(b, t, 3, 3), dtype,
                self.config.head_dim,
            ),
            shape=(t, h, w),
            rope_start=int(rope_start),
        )

    def _layouts(self, video: VideoTokens, text_len: int | None = None):
        t, h, w = video.shape
        img = layout_for(self.sequence_parallel, t, h * w)
        return img if text_len is None else (img, layout_for(self.sequence_parallel, 1, text_len))

    def _project_out(self, video: VideoTokens, img: torch.Tensor, layout=LOCAL) -> torch.Tensor:
        out = layout.gather(self.final_layer(img, video.vec))
        t, h, w = video.shape
        return out.view(out.shape[0], t, h, w, -1).permute(0, 4, 1, 2, 3)

    # -- bidirectional

    def forward(self, video: VideoTokens, condition: ConditionTokens) -> torch.Tensor:
        """Joint attention of all image and text tokens; returns the velocity [B, out, T, h, w]."""
        img = video.tokens
        txt = condition.tokens.expand(img.shape[0], -1, -1)
        vec_txt = condition.vec.expand(img.shape[0], -1)
        img_layout, txt_layout = self._layouts(video, txt.shape[1])
        img, txt = img_layout.shard(img), txt_layout.shard(txt)
        for block in self.double_blocks:
            img, txt = block(img, txt, video.vec, vec_txt, video.rope, video.camera, img_layout, txt_layout)
        return self._project_out(video, img, img_layout)

    # -- autoregressive

    def ar_start(self, condition: ConditionTokens, layout: ARCacheLayout) -> ARCache:
        """Run the text stream alone (text attends to text) and keep every layer's text K/V in a cache
        sized for `layout` (its largest context and one chunk after the text)."""
        txt, vec_txt = condition.tokens, condition.vec
        cache = ARCache(layout, text_len=txt.shape[1])
        last = len(self.double_blocks) - 1
        shards = layout_for(self.sequence_parallel, 1, txt.shape[1])
        txt = shards.shard(txt)
        for index, block in enumerate(self.double_blocks):
            txt, k, v = block.forward_text(txt, vec_txt, outputs=index < last, layout=shards)
            cache.add_layer(k[0], v[0])  # this rank's heads: all on one rank, H/N with sequence parallelism
        return cache

    def _run_cached(self, cache: ARCache, video: VideoTokens, offset: int, outputs: bool = True) -> torch.Tensor | None:
        """Run `video` through every block against the cache, writing its K/V at `offset`. With
        `outputs=False` (a context pass: only the K/V it leaves in the cache are used) the last block
        stops once its K/V are written. Returns this rank's token slice (all tokens on one rank)."""
        if video.tokens.shape[0] != 1:
            raise ValueError("the AR passes take one sample; run CFG branches with separate caches")
        layout = self._layouts(video)
        img = layout.shard(video.tokens)
        last = len(self.double_blocks) - 1
        for index, (block, k, v) in enumerate(zip(self.double_blocks, cache.keys, cache.values)):
            img = block.forward_cached(img, video.vec, video.rope, video.camera, k, v, offset,
                                       outputs=outputs or index < last, layout=layout)
        return img

    def ar_context_pass(self, cache: ARCache, video: VideoTokens) -> None:
        """Store the K/V of the selected clean context latents (they attend to text + themselves).

        Replaces whatever context the cache held; `video` must use RoPE start 0 (``ar_cache.CONTEXT_ROPE_START``)
        and fit the cache's layout, or ValueError is raised before anything is written.
        """
        offset = cache.reserve_context(video.shape, video.rope_start)
        self._run_cached(cache, video, offset, outputs=False)
        cache.commit_context(video.shape)

    def ar_clear_context(self, cache: ARCache) -> None:
        """Forget the stored context (the next chunk attends to the text and itself only)."""
        cache.clear_context()

    def ar_chunk_pass(self, cache: ARCache, video: VideoTokens) -> torch.Tensor:
        """Velocity of the current chunk, attending to [text, context, itself].

        `video` must use RoPE start ``cache.chunk_rope_start`` (the stored context latents come first)
        and fit the cache's layout, or ValueError is raised before anything is written.
        """
        img = self._run_cached(cache, video, cache.chunk_offset(video.shape, video.rope_start))
        return self._project_out(video, img, self._layouts(video))
