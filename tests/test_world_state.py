"""World sessions at the pipeline level: split generation == one long generation, the state file's
strict reader, the continuation camera and the decoder resume."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from pipeline.encoders.causal_decode import CausalVAEDecoder
from pipeline.errors import (
    FrameCountError,
    ModelUnavailableError,
    SessionTooLongError,
    StateError,
    StateMismatchError,
)
from pipeline.generation.camera import continue_pose, parse_pose
from pipeline.generation.continuation import continuation_request
from pipeline.generation.engine import GenerationRequest
from pipeline.generation.seeding import chunk_noise, chunk_seed
from pipeline.generation.world_state import SessionLimits, WorldState, checkpoint_fingerprint


def generate(pipe, image, pose, mode="ar", **kwargs):
    return pipe.generate(GenerationRequest(prompt="a harbour at dusk", image=image, camera=parse_pose(pose),
                                           mode=mode, seed=11, num_inference_steps=2, **kwargs))


@pytest.fixture(scope="module")
def ar_split(pipe, image):
    one = generate(pipe, image, "w-7, right-8")
    first = generate(pipe, image, "w-7")
    state = WorldState.from_bytes(first.state.to_bytes())
    second = pipe.generate(continuation_request(state, "right-8"))
    return one, first, second


def test_ar_split_generation_is_bit_identical_to_one_long_generation(ar_split):
    one, first, second = ar_split
    assert first.state.num_latents == 8 and second.state.num_latents == 16
    assert torch.equal(second.state.latents, one.state.latents)
    assert torch.equal(second.state.c2w, one.state.c2w)
    assert torch.equal(second.state.actions, one.state.actions)
    # the continuation's video holds only the new frames: 4 per new latent, joined without a seam
    assert first.frames.shape[0] == 29 and second.frames.shape[0] == 32
    np.testing.assert_array_equal(np.concatenate([first.frames, second.frames]), one.frames)
    assert "decode_resume" in second.timings


def test_bidirectional_split_generation_is_bit_identical(pipe, image):
    one = generate(pipe, image, "w-15, left-16", mode="bidirectional")
    first = generate(pipe, image, "w-15", mode="bidirectional")
    second = pipe.generate(continuation_request(first.state, "left-16"))
    assert torch.equal(second.state.latents, one.state.latents)
    np.testing.assert_array_equal(np.concatenate([first.frames, second.frames]), one.frames)


def test_three_segments_with_a_prompt_change(pipe, image, ar_split):
    one, first, second = ar_split
    third = pipe.generate(continuation_request(second.state, [{"key": "w+left", "latents": 4, "degrees": 4}],
                                               prompt="the harbour at night"))
    assert third.state.num_latents == 20 and third.frames.shape[0] == 16
    assert torch.equal(third.state.latents[:16], one.state.latents)  # the history is carried unchanged
    assert third.state.prompt == "the harbour at night" and third.state.seed == 11
    same_prompt = pipe.generate(continuation_request(second.state, [{"key": "w+left", "latents": 4, "degrees": 4}]))
    assert not torch.equal(same_prompt.state.latents[16:], third.state.latents[16:])


def test_pose_json_continuation_gives_absolute_poses(pipe, image, ar_split):
    one, first, _ = ar_split
    c2w = one.state.c2w.numpy()
    k = [[969.6969696969696, 0.0, 960.0], [0.0, 969.6969696969696, 540.0], [0.0, 0.0, 1.0]]
    spec = {str(i): {"extrinsic": c2w[8 + i].tolist(), "K": k} for i in range(8)}
    second = pipe.generate(continuation_request(first.state, spec))
    assert torch.equal(second.state.latents, one.state.latents)


def test_continue_pose_matches_one_trajectory():
    whole = parse_pose("w-7, right-5, a-3")
    head = parse_pose("w-7")
    tail = continue_pose("right-5, a-3", head.c2w64[-1])
    assert tail.num_latents == 8
    np.testing.assert_array_equal(np.concatenate([head.c2w64, tail.c2w64]), whole.c2w64)
    assert torch.equal(torch.cat([head.w2c, tail.w2c]), whole.w2c)
    assert torch.equal(torch.cat([head.actions, tail.actions]), whole.actions)


def test_seed_scheme_is_per_chunk():
    assert chunk_seed(5, "noise", 3) == chunk_seed(5, "noise", 3)
    assert len({chunk_seed(5, "noise", 3), chunk_seed(5, "noise", 4), chunk_seed(6, "noise", 3),
                chunk_seed(5, "memory", 3)}) == 4
    assert torch.equal(chunk_noise(5, 2, (1, 2, 4, 3, 3)), chunk_noise(5, 2, (1, 2, 4, 3, 3)))


def test_continuation_length_rule_is_worded_in_frames(ar_split):
    with pytest.raises(FrameCountError, match=r"steps of 4 \(16 frames\).*'w-7' adds 7 latents \(28 frames\)"):
        continuation_request(ar_split[1].state, "w-7")


def test_another_mode_checkpoint_or_size_is_refused(pipe, ar_split):
    state = ar_split[1].state
    with pytest.raises(StateMismatchError, match="ar mode"):
        continuation_request(state, "w-4", mode="bidirectional")
    other = WorldState(**{**vars(state), "checkpoint": "sha256:" + "0" * 32})
    with pytest.raises(StateMismatchError, match="another ar_distilled checkpoint"):
        pipe.generate(continuation_request(other, "w-4"))
    bigger = WorldState(**{**vars(state), "latents": torch.zeros(8, 32, 4, 5), "image_latent": torch.zeros(32, 4, 5),
                           "height": 64})
    with pytest.raises(StateMismatchError, match="80x64"):
        pipe.generate(continuation_request(bigger, "w-4"))


def test_a_state_records_its_model_and_continues_only_on_it(pipe, ar_split):
    """The model's name travels in the state; continuing it with another model (even one of the same
    rollout, even on a worker holding both) is STATE_MISMATCH, by request or at the pipeline."""
    state = ar_split[1].state
    assert state.model == "ar_distilled" and state.metadata()["model"] == "ar_distilled"
    again = WorldState.from_bytes(state.to_bytes())
    assert again.model == "ar_distilled"
    with pytest.raises(StateMismatchError, match="made with model ar_distilled.*asks for ar_rl"):
        continuation_request(state, "w-4", model="ar_rl")
    relabelled = WorldState(**{**vars(state), "model": "ar_rl"})  # as if made by ar_rl
    with pytest.raises(StateMismatchError, match="made with model ar_rl; this request asks for ar_distilled"):
        request = continuation_request(relabelled, "w-4")
        request.model = "ar_distilled"  # a request on this worker's ar_distilled
        pipe.generate(request)
    with pytest.raises(ModelUnavailableError, match="ar_rl.*loaded: ar_distilled, bidirectional"):
        pipe.generate(continuation_request(relabelled, "w-4"))


def test_a_state_without_a_model_name_is_its_modes_model(ar_split):
    """States written before models had names carry no ``model``: they are their mode's model."""
    state = ar_split[1].state
    data = _rewrite(state.to_bytes(), lambda header: header["__metadata__"].pop("model"))
    assert WorldState.from_bytes(data).model == "ar_distilled"
    bad = _rewrite(state.to_bytes(), lambda header: header["__metadata__"].update(model="bidirectional"))
    with pytest.raises(StateError, match="not a ar model"):
        WorldState.from_bytes(bad)


def test_session_limit(pipe, ar_split, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_MAX_SESSION_LATENTS", "12")
    with pytest.raises(SessionTooLongError, match="16 latents"):
        pipe.generate(continuation_request(ar_split[1].state, "w-8"))
    with pytest.raises(SessionTooLongError, match="at most 12 latents"):
        WorldState.from_bytes(ar_split[2].state.to_bytes())
    with pytest.raises(SessionTooLongError, match="bytes"):
        WorldState.from_bytes(ar_split[2].state.to_bytes(), SessionLimits(max_bytes=2048))


# ---- the strict reader ---------------------------------------------------------------------------
def _rewrite(data: bytes, edit) -> bytes:
    """Apply `edit(header)` to a safetensors file's JSON header, keep the data."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length:]


def _tensors_edit(state: WorldState, **changes) -> bytes:
    from safetensors.torch import save

    tensors = {**state.tensors(), **changes}
    tensors = {k: v.contiguous() for k, v in tensors.items() if v is not None}
    return save(tensors, metadata=state.metadata())


def test_state_round_trip(ar_split, tmp_path):
    state = ar_split[1].state
    path = tmp_path / "world.safetensors"
    size = state.save(path)
    loaded = WorldState.load(path)
    assert size == path.stat().st_size
    for name in ("latents", "c2w", "intrinsics", "actions", "image_latent", "vision"):
        assert torch.equal(getattr(loaded, name), getattr(state, name))
    assert (loaded.prompt, loaded.seed, loaded.mode, loaded.width, loaded.height) == (
        state.prompt, state.seed, state.mode, state.width, state.height)
    assert loaded.checkpoint.startswith("sha256:") and loaded.worker_version


@pytest.mark.parametrize("case, fragment", [
    ("short", "too short"),
    ("header_length", "header length"),
    ("not_json", "not valid JSON"),
    ("pickle", "header length"),
    ("format", "format"),
    ("version", "version"),
    ("seed", "seed"),
    ("missing_tensor", r"missing \['vision'\]"),
    ("dtype", "'latents' is 'F64'"),
    ("shape", "'c2w' is"),
    ("offsets", "byte range"),
    ("nan", "NaN"),
    ("actions", "labels"),
    ("camera", "row"),
    ("size", "does not match its latents"),
])
def test_bad_states_are_refused_with_invalid_state(ar_split, case, fragment):
    state = ar_split[1].state
    good = state.to_bytes()
    if case == "short":
        data = good[:5]
    elif case == "header_length":
        data = struct.pack("<Q", 2**40) + good[8:]
    elif case == "not_json":
        data = struct.pack("<Q", 4) + b"{{{{" + good[12:]
    elif case == "pickle":
        import io

        buf = io.BytesIO()
        torch.save({"latents": state.latents}, buf)  # a pickle never gets to an unpickler
        data = buf.getvalue()
    elif case in ("format", "version", "seed", "size"):
        key, value = {"format": ("format", "other"), "version": ("format_version", "9"),
                      "seed": ("seed", "-1"), "size": ("width", "800")}[case]
        data = _rewrite(good, lambda h: h["__metadata__"].__setitem__(key, value))
    elif case == "missing_tensor":
        data = _tensors_edit(state, vision=None)
    elif case == "dtype":
        data = _tensors_edit(state, latents=state.latents.double())
    elif case == "shape":
        data = _tensors_edit(state, c2w=state.c2w[:4])
    elif case == "offsets":
        data = _rewrite(good, lambda h: h["actions"].__setitem__("shape", [7]))
    elif case == "nan":
        bad = state.latents.clone()
        bad[3, 0, 0, 0] = float("nan")
        data = _tensors_edit(state, latents=bad)
    elif case == "actions":
        data = _tensors_edit(state, actions=state.actions + 100)
    elif case == "camera":
        bad = state.c2w.clone()
        bad[2, 3, 0] = 1.0
        data = _tensors_edit(state, c2w=bad)
    with pytest.raises(StateError, match=fragment) as info:
        WorldState.from_bytes(data)
    assert info.value.code == "INVALID_STATE"


def test_checkpoint_fingerprint_sees_the_weights(tmp_path):
    from safetensors.torch import save_file

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.zeros(1000)}, a)
    save_file({"w": torch.zeros(1000).index_fill_(0, torch.tensor([999]), 1.0)}, b)
    assert checkpoint_fingerprint(a) == checkpoint_fingerprint(a)
    assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)


def test_decoder_resume_rebuilds_the_exact_state(pipe):
    vae = pipe.vae
    latents = torch.randn(1, 32, 44, 3, 5, generator=torch.Generator().manual_seed(0))
    whole = CausalVAEDecoder(vae).decode(latents)
    reach = CausalVAEDecoder(vae).history_latents()
    assert 4 < reach < 40
    resumed = CausalVAEDecoder(vae)
    resumed.resume(latents[:, :, 40 - reach:40], 40 - reach)
    assert torch.equal(resumed.decode(latents[:, :, 40:]), whole[:, :, 1 + 4 * 39:])
    short = CausalVAEDecoder(vae)
    short.resume(latents[:, :, 36:40], 36)  # too little history: close, not exact
    assert not torch.equal(short.decode(latents[:, :, 40:]), whole[:, :, 1 + 4 * 39:])


def test_decoder_resume_from_the_start_is_exact_and_trimmed(pipe):
    vae = pipe.vae
    latents = torch.randn(1, 32, 40, 3, 5, generator=torch.Generator().manual_seed(1))
    whole = CausalVAEDecoder(vae).decode(latents)
    for history in (1, 2, 5, 16, 36):  # shorter and longer than the receptive field, from latent 0
        resumed = CausalVAEDecoder(vae)
        resumed.resume(latents[:, :, :history], 0)
        assert resumed.latents_decoded == history
        assert torch.equal(resumed.decode(latents[:, :, history:]), whole[:, :, 1 + 4 * (history - 1):]), history


def test_memory_points_prefetch_gives_the_same_points():
    from pipeline.generation.seeding import MemoryPoints, chunk_memory_points

    points = MemoryPoints(9, 4)
    for chunk in (1, 2, 3, 1):
        assert torch.equal(points(chunk), chunk_memory_points(9, chunk))
