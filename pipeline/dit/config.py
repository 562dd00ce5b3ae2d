"""Hyper-parameters of the WorldPlay transformer.

The official checkpoints ship as bare safetensors files without a config, so the config is either
the known full-size one (:meth:`WorldPlayConfig.full`) or inferred from the tensor shapes in a
checkpoint's header (:meth:`WorldPlayConfig.from_checkpoint`); a ``config.json`` beside the file,
when present, overrides the inferred values (the tiny test fixtures write one).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.safetensors_header import SafetensorsHeaderError, read_header

CONFIG_FILENAME = "config.json"


def default_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE split of a head over (time, height, width): 16/56/56 for the real 128-wide heads."""
    t = head_dim // 8
    t -= t % 2
    hw = (head_dim - t) // 2
    hw -= hw % 2
    t = head_dim - 2 * hw
    return (t, hw, hw)



def layer_count(shapes, prefix: str) -> int:
    """How many numbered layers ``<prefix><n>.`` a checkpoint's tensor names hold (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in shapes for m in [pattern.match(k)] if m}
    return max(found) + 1 if found else 0

@dataclass(frozen=True)
class WorldPlayConfig:
    """Shape of the HunyuanVideo-1.5 480p i2v DiT with the WorldPlay action additions."""

    hidden_size: int = 2048
    num_heads: int = 16
    num_layers: int = 54
    mlp_hidden_size: int = 8192
    latent_channels: int = 32  # noisy latent channels; the input adds as many condition channels + 1 mask
    out_channels: int = 32
    rope_axes: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 256.0
    text_dim: int = 3584  # Qwen2.5-VL hidden size
    refiner_depth: int = 2
    refiner_mlp_hidden_size: int = 8192
    byt5_dim: int = 1472
    byt5_hidden_size: int = 2048
    byt5_out_size: int = 2048
    vision_dim: int = 1152  # SigLIP width
    num_actions: int = 81
    timestep_embed_dim: int = 256
    resolution_base: int = 640  # side of the square bucket the model was trained at (480p: 640)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if sum(self.rope_axes) != self.head_dim or any(a % 2 for a in self.rope_axes):
            raise CheckpointError(f"RoPE axes {self.rope_axes} must be even and sum to the head width {self.head_dim}")
        if self.head_dim % 4:
            raise CheckpointError(f"PRoPE needs a head width divisible by 4, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def in_channels(self) -> int:
        """Channels the patch embedding reads: noisy latent + condition latent + mask."""
        return 2 * self.latent_channels + 1

    @classmethod
    def full(cls) -> "WorldPlayConfig":
        """The published 480p checkpoints (8.56e9 parameters)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> "WorldPlayConfig":
        """A few-kilobyte model of the same architecture for tests and the CPU demo."""
        values: dict[str, Any] = dict(
            hidden_size=64,
            num_heads=2,
            num_layers=2,
            mlp_hidden_size=128,
            latent_channels=32,
            out_channels=32,
            rope_axes=(4, 14, 14),
            text_dim=32,
            refiner_depth=2,
            refiner_mlp_hidden_size=256,  # upstream: 4x hidden, whatever the block MLP ratio
            byt5_dim=16,
            byt5_hidden_size=32,
            byt5_out_size=32,
            vision_dim=32,
            resolution_base=64,
        )
        values.update(overrides)
        if "rope_axes" not in overrides and ("num_heads" in overrides or "hidden_size" in overrides):
            values["rope_axes"] = default_rope_axes(values["hidden_size"] // values["num_heads"])
        values["rope_axes"] = tuple(values["rope_axes"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rope_axes"] = list(self.rope_axes)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorldPlayConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        if "rope_axes" in known:
            known["rope_axes"] = tuple(known["rope_axes"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "WorldPlayConfig":
        """Infer the config from checkpoint tensor shapes (upstream key names)."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise CheckpointError(f"checkpoint has no tensor {key!r}; is this a WorldPlay transformer?")
            return tuple(shapes[key])

        hidden, in_ch = shape("img_in.proj.weight")[:2]
        head_dim = shape("double_blocks.0.img_attn_q_norm.weight")[0]
        if (in_ch - 1) % 2:
            raise CheckpointError(f"img_in takes {in_ch} channels; expected 2*latent+1")
        return cls(
            hidden_size=hidden,
            num_heads=hidden // head_dim,
            num_layers=layer_count(shapes, "double_blocks."),
            mlp_hidden_size=shape("double_blocks.0.img_mlp.fc1.weight")[0],
            latent_channels=(in_ch - 1) // 2,
            out_channels=shape("final_layer.linear.weight")[0],
            rope_axes=default_rope_axes(head_dim),
            text_dim=shape("txt_in.input_embedder.weight")[1],
            refiner_depth=layer_count(shapes, "txt_in.individual_token_refiner.blocks."),
            refiner_mlp_hidden_size=shape("txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight")[0],
            byt5_dim=shape("byt5_in.layernorm.weight")[0],
            byt5_hidden_size=shape("byt5_in.fc1.weight")[0],
            byt5_out_size=shape("byt5_in.fc2.weight")[0],
            vision_dim=shape("vision_in.proj.0.weight")[0],
            num_actions=81,
            timestep_embed_dim=shape("time_in.mlp.0.weight")[1],
        )

    @classmethod
    def from_checkpoint(cls, path: Path) -> "WorldPlayConfig":
        """Config of a checkpoint file: inferred from its header, overridden by a config.json beside it."""
        shapes = checkpoint_shapes(path)
        inferred = cls.from_shapes(shapes)
        config_file = Path(path).parent / CONFIG_FILENAME
        if config_file.is_file():
            try:
                data = json.loads(config_file.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
            if isinstance(data, dict) and "hidden_size" in data:
                merged = inferred.to_dict()
                merged.update({k: v for k, v in data.items() if k in merged})
                return cls.from_dict(merged)
        return inferred


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a checkpoint, read from its header after checking that the file is
    whole (its size is what the header describes); :class:`CheckpointError` otherwise."""
    try:
        header = read_header(path)
        problem = header.size_problem()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except SafetensorsHeaderError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        return {name: tuple(int(d) for d in entry["shape"]) for name, entry in header.tensors.items()}
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: corrupt header: a tensor entry without a valid shape") from None
