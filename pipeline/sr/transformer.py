"""The step-distilled SR transformer of HunyuanVideo-1.5's 720p stage (``transformer/720p_sr_distilled``).

It is the plain HunyuanVideo-1.5 double-stream DiT (the one WorldPlay extends, without WorldPlay's action
embedding and camera-attention branch) with two differences from the 480p i2v network:

* its patch embedding reads ``in_channels`` = 98 channels: 32 noisy latents, 33 image-condition channels
  (the reference image's latent at frame 0, zeros after, and a mask that is 1 at frame 0) and 33
  low-resolution-condition channels (the upsampled, re-noised 480p latents and a mask of ones);
* with ``use_meanflow`` it also embeds the timestep the step lands on (``time_r_in``), added to the
  timestep embedding: the distilled model predicts the mean velocity from t to that next timestep.

One modulation vector per sample (``time_in(t) + time_r_in(r)``) drives every block's image and text streams and
the final layer; the text refiner sees ``t`` alone. Conditioning tokens are [SigLIP, valid byT5, valid Qwen],
padding removed (the published model masks it out; removing it is the same attention).

Parameter names are the published checkpoint's (upstream's module names), so it loads strictly with no key
mapping: :func:`load_sr_transformer` reads ``config.json`` (upstream's keys) and the safetensors beside it; the
widths the config does not state (the text refiner's, byT5 mapper's) come from the tensor shapes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.dit.attention import attention
from pipeline.dit.checkpoint import check_keys
from pipeline.dit.config import WorldPlayConfig, checkpoint_shapes, layer_count
from pipeline.dit.transformer import (
    DoubleStreamBlock,
    FinalLayer,
    Rope,
    TimestepEmbedder,
    TransformerBase,
)
from pipeline.errors import CheckpointError

__all__ = ["SRConfig", "SRTransformer", "load_sr_transformer", "write_random_sr_transformer"]

logger = logging.getLogger("worldplay.sr")

WEIGHTS = "diffusion_pytorch_model.safetensors"

#: upstream settings the published SR config must have for this implementation to be the same network
_REQUIRED = {
    "patch_size": [1, 1, 1],
    "mm_single_blocks_depth": 0,
    "guidance_embed": False,
    "text_projection": "single_refiner",
    "text_pool_type": None,
    "glyph_byT5_v2": True,
    "vision_projection": "linear",
    "use_cond_type_embedding": True,
    "qk_norm": True,
    "qk_norm_type": "rms",
    "qkv_bias": True,
    "mlp_act_type": "gelu_tanh",
    "is_reshape_temporal_channels": False,
}


@dataclass(frozen=True)
class SRConfig:
    """The block widths (a :class:`WorldPlayConfig`, whose ``latent_channels`` are the noisy latents) plus the
    patch embedding's input width and meanflow."""

    base: WorldPlayConfig
    in_channels: int = 98
    use_meanflow: bool = True
    ideal_resolution: str = "720p"

    def to_upstream(self) -> dict:
        """``config.json`` in upstream's key names (what the published folder holds)."""
        b = self.base
        return {
            "_class_name": "HunyuanVideo_1_5_DiffusionTransformer",
            **_REQUIRED,
            "in_channels": self.in_channels,
            "concat_condition": False,  # the channels are concatenated by the caller: in_channels is the input
            "out_channels": b.out_channels,
            "hidden_size": b.hidden_size,
            "heads_num": b.num_heads,
            "mlp_width_ratio": b.mlp_hidden_size / b.hidden_size,
            "mm_double_blocks_depth": b.num_layers,
            "rope_dim_list": list(b.rope_axes),
            "rope_theta": b.rope_theta,
            "use_meanflow": self.use_meanflow,
            "text_states_dim": b.text_dim,
            "vision_states_dim": b.vision_dim,
            "ideal_resolution": self.ideal_resolution,
            "ideal_task": "sr",
        }

    @classmethod
    def from_upstream(cls, config: dict, shapes: dict[str, tuple[int, ...]], source: str) -> "SRConfig":
        """From the published ``config.json`` and the checkpoint's tensor shapes; refuses a config whose network
        differs from this implementation."""
        wrong = {k: config.get(k, v) for k, v in _REQUIRED.items() if k in config and config[k] != v}
        if wrong:
            raise CheckpointError(f"{source}: SR transformer settings this worker does not implement: {wrong}")

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise CheckpointError(f"{source}: no tensor {key!r}; is this the SR transformer?")
            return tuple(shapes[key])

        try:
            hidden, heads = int(config["hidden_size"]), int(config["heads_num"])
            in_channels = int(config["in_channels"])
            out_channels = int(config.get("out_channels") or in_channels)
            if config.get("concat_condition", True):  # upstream's patch embedding then adds condition + mask
                in_channels = 2 * in_channels + 1
            base = WorldPlayConfig(
                hidden_size=hidden,
                num_heads=heads,
                num_layers=int(config["mm_double_blocks_depth"]),
                mlp_hidden_size=int(round(hidden * float(config.get("mlp_width_ratio", 4.0)))),
                latent_channels=out_channels,
                out_channels=out_channels,
                rope_axes=tuple(int(a) for a in config.get("rope_dim_list", (16, 56, 56))),
                rope_theta=float(config.get("rope_theta", 256)),
                text_dim=int(config.get("text_states_dim", shape("txt_in.input_embedder.weight")[1])),
                refiner_depth=layer_count(shapes, "txt_in.individual_token_refiner.blocks."),
                refiner_mlp_hidden_size=shape("txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight")[0],
                byt5_dim=shape("byt5_in.layernorm.weight")[0],
                byt5_hidden_size=shape("byt5_in.fc1.weight")[0],
                byt5_out_size=shape("byt5_in.fc2.weight")[0],
                vision_dim=int(config.get("vision_states_dim", shape("vision_in.proj.0.weight")[0])),
                timestep_embed_dim=shape("time_in.mlp.0.weight")[1],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: unusable SR transformer config ({type(exc).__name__}: {exc})") from exc
        if in_channels != 3 * out_channels + 2:
            raise CheckpointError(f"{source}: the SR transformer reads {in_channels} channels; expected "
                                  f"{3 * out_channels + 2} (noisy + image condition + low-resolution condition)")
        return cls(base=base, in_channels=in_channels, use_meanflow=bool(config.get("use_meanflow", False)),
                   ideal_resolution=str(config.get("ideal_resolution") or "720p"))


class SRBlock(DoubleStreamBlock):
    """A double-stream block without WorldPlay's camera branch: image and text attend jointly (RoPE on the
    image tokens), each stream modulated by the sample's one vector."""

    def __init__(self, config: WorldPlayConfig):
        super().__init__(config)
        del self.img_attn_prope_proj

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, rope: Rope):  # type: ignore[override]
        img_mods = self.img_mod(vec).unsqueeze(1).chunk(6, dim=-1)  # each [B, 1, C]
        txt_mods = self.txt_mod(vec).unsqueeze(1).chunk(6, dim=-1)
        q, k, v = self._qkv("img", img, img_mods[0], img_mods[1])
        tq, tk, tv = self._qkv("txt", txt, txt_mods[0], txt_mods[1])
        n_img = q.shape[1]
        out = attention(
            torch.cat([rope(q), tq], 1).transpose(1, 2),
            torch.cat([rope(k), tk], 1).transpose(1, 2),
            torch.cat([v, tv], 1).transpose(1, 2),
        ).transpose(1, 2)  # [B, L, H, D]
        img = self._finish("img", img, self.img_attn_proj(out[:, :n_img].flatten(2)), img_mods)
        txt = self._finish("txt", txt, self.txt_attn_proj(out[:, n_img:].flatten(2)), txt_mods)
        return img, txt


class SRTransformer(TransformerBase):
    def __init__(self, config: SRConfig):
        super().__init__()
        self.config = config
        base = config.base
        c = base.hidden_size
        self._build_inputs(base, config.in_channels)
        if config.use_meanflow:
            self.time_r_in = TimestepEmbedder(c, base.timestep_embed_dim)
        self.cond_type_embedding = nn.Embedding(3, c)
        self.double_blocks = nn.ModuleList(SRBlock(base) for _ in range(base.num_layers))
        self.final_layer = FinalLayer(c, base.out_channels)

    def condition_tokens(self, text, text_mask, byt5, byt5_mask, vision, t: torch.Tensor) -> torch.Tensor:
        """[1, Lc, C]: SigLIP, valid byT5 and valid Qwen tokens (the refiner conditioned on `t`)."""
        dtype, device = self.dtype, self.device
        t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(1)
        text_valid = text[0].to(device)[text_mask[0].to(device).bool()].unsqueeze(0).to(dtype)
        byt5_valid = byt5[0].to(device)[byt5_mask[0].to(device).bool()].unsqueeze(0).to(dtype)
        type_emb = self.cond_type_embedding.weight
        parts = [self.vision_in(vision.to(device, dtype)) + type_emb[2]]
        if byt5_valid.shape[1]:
            parts.append(self.byt5_in(byt5_valid) + type_emb[1])
        parts.append(self.txt_in(text_valid, t) + type_emb[0])
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor | None, condition: torch.Tensor
                ) -> torch.Tensor:
        """x [B, in_channels, T, h, w]; t / t_next: timesteps in [0, 1000] (scalars or [B]); condition: the
        tokens of :meth:`condition_tokens` ([1 or B, Lc, C]). Returns the velocity [B, out, T, h, w]."""
        b, channels, frames, h, w = x.shape
        if channels != self.config.in_channels:
            raise ValueError(f"the SR transformer takes {self.config.in_channels} channels; got {channels}")
        dtype, device = self.dtype, self.device
        img = self.img_in(x.to(device, dtype))
        t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1).expand(b)
        vec = self.time_in(t)
        if self.config.use_meanflow:
            if t_next is None:
                raise ValueError("this SR transformer (use_meanflow) needs the next timestep")
            t_next = torch.as_tensor(t_next, dtype=torch.float32, device=device).reshape(-1).expand(b)
            vec = vec + self.time_r_in(t_next)
        txt = condition.to(device, dtype).expand(b, -1, -1)
        rope = Rope.create(self.config.base, 0, frames, h, w, device)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope)
        out = self.final_layer(img, vec.unsqueeze(1))
        return out.view(b, frames, h, w, -1).permute(0, 4, 1, 2, 3)


def _expected(config: SRConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SRTransformer(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def load_sr_transformer(folder: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.bfloat16) -> SRTransformer:
    """Build from ``config.json`` and fill from ``diffusion_pytorch_model.safetensors`` strictly: every
    tensor name and shape must match, none missing or left over (CheckpointError otherwise)."""
    from safetensors import safe_open

    folder = Path(folder)
    started = time.perf_counter()
    path = folder / WEIGHTS
    try:
        upstream = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: cannot read the SR transformer config: {exc}") from exc
    found = checkpoint_shapes(path)
    config = SRConfig.from_upstream(upstream, found, str(folder))
    check_keys(found, _expected(config), str(path))
    device = torch.device(device)
    with torch.device("meta"):
        model = SRTransformer(config)
    target = "cpu" if device.type == "cpu" else str(device if device.index is not None else f"{device.type}:0")
    state = {}
    with safe_open(str(path), framework="pt", device=target) as reader:
        for name in found:
            state[name] = reader.get_tensor(name).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    logger.info("loaded the SR transformer (%d tensors, %s) in %.2f s", len(state), dtype,
                time.perf_counter() - started)
    return model


def write_random_sr_transformer(folder: str | Path, config: SRConfig, seed: int = 0) -> Path:
    """A randomly initialised SR transformer in the published layout (``config.json`` in upstream's keys +
    ``diffusion_pytorch_model.safetensors``), for tests and tiny fixtures."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SRTransformer(config)
        with torch.no_grad():
            model.cond_type_embedding.weight.normal_(0.0, 0.1)  # zero in training: make every path count
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    finally:
        torch.random.set_rng_state(generator_state)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config.to_upstream(), indent=2) + "\n")
    return folder
