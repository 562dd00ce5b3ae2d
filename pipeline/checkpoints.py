"""The published WorldPlay checkpoints by name: where each lives, how it rolls out, its default sampling.

A leaf module (no ``pipeline`` imports) shared by the request schema, model resolution, the engine and
the worker, so a model name means one thing everywhere.

- ``ar_distilled``: ``ar_distilled_action_model/model.safetensors``, AR rollout, 4 steps, guidance 1.0 (no CFG)
- ``ar``: ``ar_model/diffusion_pytorch_model.safetensors``, AR rollout, 50 steps, guidance 6.0 (CFG)
- ``ar_rl``: ``ar_rl_model/diffusion_pytorch_model.safetensors``, AR rollout, 50 steps, guidance 6.0 (CFG)
- ``bidirectional``: ``bidirectional_model/diffusion_pytorch_model.safetensors``, bidirectional rollout,
  50 steps, guidance 6.0 (CFG)

The defaults are upstream's (HY-WorldPlay ``run.sh`` / ``README.md`` / ``hyvideo/generate.py``): the
distilled model runs with ``--few_step true --num_inference_steps 4`` (few-step forces guidance 1.0), the
others with the script's default 50 steps and the 480p i2v pipeline's guidance 6.0. The file names are those
the Hugging Face repo holds (upstream's download script copies the distilled ``model.safetensors`` to
``diffusion_pytorch_model.safetensors``; we read it under its published name).

The older request field ``mode`` names a model too: ``"ar"`` is ``ar_distilled`` (the only AR checkpoint the
worker served then) and ``"bidirectional"`` is ``bidirectional`` (:data:`MODE_ALIASES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["Checkpoint", "CHECKPOINTS", "MODEL_NAMES", "MODE_ALIASES", "DEFAULT_MODEL", "ROLLOUTS",
           "rollout_of", "model_for_mode", "resolve_model", "parse_model_list"]

ROLLOUTS: tuple[str, ...] = ("ar", "bidirectional")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    folder: str  # sub-folder of tencent/HY-WorldPlay
    file: str  # checkpoint file in it
    rollout: str  # "ar" (4-latent chunks, K/V cache) or "bidirectional" (16-latent chunks)
    steps: int  # published default denoising steps
    guidance: float  # published default guidance scale (> 1: classifier-free guidance)
    title: str  # upstream's model-zoo name

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    @property
    def rel(self) -> str:
        return f"{self.folder}/{self.file}"


CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("ar_distilled", "ar_distilled_action_model", "model.safetensors", "ar", 4, 1.0,
               "HY-World1.5-Autoregressive-480P-I2V-distill"),
    Checkpoint("ar", "ar_model", "diffusion_pytorch_model.safetensors", "ar", 50, 6.0,
               "HY-World1.5-Autoregressive-480P-I2V"),
    Checkpoint("ar_rl", "ar_rl_model", "diffusion_pytorch_model.safetensors", "ar", 50, 6.0,
               "HY-World1.5-Autoregressive-480P-I2V-rl"),
    Checkpoint("bidirectional", "bidirectional_model", "diffusion_pytorch_model.safetensors", "bidirectional", 50, 6.0,
               "HY-World1.5-Bidirectional-480P-I2V"),
)}
MODEL_NAMES: tuple[str, ...] = tuple(CHECKPOINTS)
MODE_ALIASES: dict[str, str] = {"ar": "ar_distilled", "bidirectional": "bidirectional"}
DEFAULT_MODEL = "ar_distilled"


def rollout_of(model: str) -> str:
    """The rollout ("ar" or "bidirectional") a model runs."""
    return CHECKPOINTS[model].rollout


def model_for_mode(mode: str) -> str:
    return MODE_ALIASES[mode]


def resolve_model(model: str | None, mode: str | None) -> str:
    """The model a request names through ``model``, ``mode`` (its older alias) or neither (the default).

    Both given must agree (mode "ar" is model ar_distilled, mode "bidirectional" model bidirectional);
    raises ValueError otherwise."""
    if model is not None and model not in CHECKPOINTS:
        raise ValueError(f"model {model!r} is unknown; expected one of {', '.join(MODEL_NAMES)}")
    if mode is not None and mode not in MODE_ALIASES:
        raise ValueError(f"mode {mode!r} is unknown; expected one of {', '.join(MODE_ALIASES)}")
    if model is not None and mode is not None and MODE_ALIASES[mode] != model:
        raise ValueError(f"mode {mode!r} means model {MODE_ALIASES[mode]!r}, but model {model!r} was given: "
                         "give model only (mode is its older alias)")
    if model is not None:
        return model
    return MODE_ALIASES[mode] if mode is not None else DEFAULT_MODEL


def parse_model_list(values: Iterable[str], *, legacy_modes: bool = False) -> tuple[str, ...]:
    """Model names in registry order from `values` (``all`` = every model). With `legacy_modes` the values
    are old mode names ("ar" = ar_distilled). Raises ValueError naming the valid ones."""
    values = [v.strip().lower() for v in values if v and v.strip()]
    known = MODE_ALIASES if legacy_modes else CHECKPOINTS
    bad = [v for v in values if v != "all" and v not in known]
    if bad or not values:
        raise ValueError(f"{', '.join(bad) if bad else 'nothing'}: expected one or more of "
                         f"{', '.join(known)} or all")
    if "all" in values:
        return tuple(dict.fromkeys(MODE_ALIASES.values())) if legacy_modes else MODEL_NAMES
    wanted = {MODE_ALIASES[v] if legacy_modes else v for v in values}
    return tuple(m for m in MODEL_NAMES if m in wanted)
