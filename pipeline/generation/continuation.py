"""Continuing a world session: a :class:`pipeline.generation.world_state.WorldState` plus a new camera path ->
the ``GenerationRequest`` of the new latents. The worker (``continue_from``) and ``python -m pipeline
--continue-from`` both build their request here."""

from __future__ import annotations

from typing import Any

from pipeline.checkpoints import rollout_of
from pipeline.errors import StateMismatchError
from pipeline.generation.camera import check_continuation_count, continue_pose
from pipeline.generation.engine import GenerationRequest
from pipeline.generation.world_state import WorldState

__all__ = ["continuation_request"]


def continuation_request(state: WorldState, camera_spec: Any, *, prompt: str | None = None,
                         negative_prompt: str | None = None, mode: str | None = None,
                         num_inference_steps: int | None = None, guidance_scale: float | None = None,
                         seed: int | None = None, spec_text: str | None = None, model: str | None = None):
    """The ``GenerationRequest`` that continues ``state`` along ``camera_spec`` (new latents only).

    Pose strings and action lists move on from the state's last camera; a pose JSON gives absolute
    poses in the session's world frame, one per new latent. Anything not given (prompt, negative
    prompt, model, steps, guidance, seed) is the state's. Another mode (rollout) or model (checkpoint) than the
    state's is refused: a world continues on the checkpoint that made it.
    """
    if mode is None and model is not None and rollout_of(model) != state.mode:
        mode = rollout_of(model)  # another rollout altogether: said as before models had names
    if mode is not None and mode != state.mode:
        raise StateMismatchError(
            f"the world state was made in {state.mode} mode and can only be continued in {state.mode} mode "
            f"(the request asks for {mode})"
        )
    if model is not None and model != state.model:
        raise StateMismatchError(
            f"the world state was made with model {state.model} and can only be continued with it "
            f"(the request asks for {model})"
        )
    camera = continue_pose(camera_spec, state.c2w[-1].numpy())
    if spec_text is None and isinstance(camera_spec, str) and len(camera_spec) <= 80:
        spec_text = camera_spec
    check_continuation_count(camera.num_latents, state.mode, spec_text)
    return GenerationRequest(
        prompt=state.prompt if prompt is None else prompt,
        negative_prompt=state.negative_prompt if negative_prompt is None else negative_prompt,
        image=None,
        camera=camera,
        model=state.model,
        num_inference_steps=state.num_inference_steps if num_inference_steps is None else num_inference_steps,
        guidance_scale=state.guidance_scale if guidance_scale is None else guidance_scale,
        seed=state.seed if seed is None else int(seed),
        history=state,
    )
