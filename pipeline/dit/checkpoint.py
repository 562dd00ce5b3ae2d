"""Strict loading of WorldPlay transformer checkpoints (safetensors, upstream key names).

The module is built on the meta device (no memory allocated), every tensor is read straight from the
file onto the target device and cast to the target dtype once, and then assigned into the module, so
the weights exist exactly once. Before any read, the header is checked against the architecture:
every expected key present, no unexpected key, every shape equal, file not truncated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.dit.config import WorldPlayConfig, checkpoint_shapes
from pipeline.dit.transformer import WorldPlayTransformer
from pipeline.errors import CheckpointError

logger = logging.getLogger("worldplay.checkpoint")

def expected_shapes(config: WorldPlayConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of the architecture, computed on the meta device."""
    with torch.device("meta"):
        model = WorldPlayTransformer(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_keys(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return

    def sample(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {sample(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {sample(unexpected)}")
    if wrong:
        details = [f"{k} {list(found[k])} != {list(expected[k])}" for k in wrong]
        problems.append(f"{len(wrong)} with the wrong shape: {sample(details)}")
    raise CheckpointError(f"{source} does not match the WorldPlay transformer: " + "; ".join(problems))


def load_transformer(
    path: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    config: WorldPlayConfig | None = None,
) -> WorldPlayTransformer:
    """Build the transformer for `path` and fill it from the file, strictly."""
    path = Path(path)
    started = time.perf_counter()
    found = checkpoint_shapes(path)
    config = config or WorldPlayConfig.from_checkpoint(path)
    check_keys(found, expected_shapes(config), str(path))
    device = torch.device(device)
    with torch.device("meta"):
        model = WorldPlayTransformer(config)
    state: dict[str, torch.Tensor] = {}
    target = "cpu" if device.type == "cpu" else str(device if device.index is not None else f"{device.type}:0")
    with safe_open(str(path), framework="pt", device=target) as reader:
        for name in found:
            state[name] = reader.get_tensor(name).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    seconds = time.perf_counter() - started
    logger.info(
        "loaded %s: %d tensors, %.2f GB as %s on %s in %.2f s",
        path.name, len(state), nbytes / 1e9, dtype, device, seconds,
    )
    return model


def write_random_checkpoint(path: Path, config: WorldPlayConfig, seed: int = 0, *, write_config: bool = True) -> Path:
    """Save a randomly initialised transformer under the official key names (tests, benchmarks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = WorldPlayTransformer(config)
        with torch.no_grad():
            # Modulation, gates and the embedding of condition types start at zero in training; give
            # them small random values so every path of the tiny model influences the output.
            for name, param in model.named_parameters():
                if name.endswith("cond_type_embedding.weight"):
                    param.normal_(0.0, 0.1)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    finally:
        torch.random.set_rng_state(generator_state)
    save_file(state, str(path), metadata={"format": "pt"})
    if write_config:
        config.save(path.parent)
    return path
