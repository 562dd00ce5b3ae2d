"""The fast decoder in use (tiny models, CPU): jobs opt in with ``decoder: "fast"``, live worlds stream with
it by default when it is loaded, world states hold the same latents either way, a state re-decodes with the
full VAE, and a worker without the weights says so (health, MODEL_UNAVAILABLE before any GPU work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import b64, png_bytes, run

from pipeline.encoders import components as comp
from pipeline.encoders.fast_decode import FastVideoDecoder, load_fast_decoder
from pipeline.errors import ModelUnavailableError
from pipeline.generation.camera import parse_pose
from pipeline.generation.engine import GenerationRequest
from pipeline.generation.world import ChunkActions
from pipeline.tools.tiny import write_tiny_fast_decoder

PROMPT = "a lantern-lit alley"


@pytest.fixture(scope="module")
def fast_model(tmp_path_factory):
    return load_fast_decoder(write_tiny_fast_decoder(tmp_path_factory.mktemp("taehv") / "taehv1_5.safetensors"))


@pytest.fixture
def fast_pipe(tiny_pipeline, fast_model, monkeypatch):
    """The session's tiny pipeline with a tiny fast decoder loaded (restored afterwards)."""
    monkeypatch.setattr(tiny_pipeline, "fast_decoder", fast_model)
    monkeypatch.setattr(tiny_pipeline, "fast_decoder_info", {"file": {"path": "tiny", "source": "local",
                                                                      "variant": "base"}})
    monkeypatch.delenv("WORLDPLAY_LIVE_DECODER", raising=False)
    return tiny_pipeline


def job(pipe, image, spec="w-7", **extra):
    request = GenerationRequest(prompt=PROMPT, image=image, camera=parse_pose(spec, mode="ar"), mode="ar",
                                num_inference_steps=1, seed=5, **extra)
    return pipe.generate(request)


def fast_frames(model, latents: torch.Tensor) -> np.ndarray:  # state latents [T, C, h, w] -> uint8 frames
    return comp.frames_to_uint8(FastVideoDecoder(model).decode(latents.permute(1, 0, 2, 3)[None]))


def test_a_job_decodes_with_the_decoder_it_asks_for_and_the_state_is_the_same(fast_pipe, fast_model, image):
    handed = []
    full = job(fast_pipe, image)
    fast = fast_pipe.generate(GenerationRequest(prompt=PROMPT, image=image, camera=parse_pose("w-7", mode="ar"),
                                                mode="ar", num_inference_steps=1, seed=5, decoder="fast"),
                              on_frames=handed.append)
    assert torch.equal(fast.state.latents, full.state.latents)  # world states hold latents: unaffected
    assert fast.frames.shape == full.frames.shape == (29, 48, 80, 3)
    assert [len(f) for f in handed] == [13, 16]
    assert np.array_equal(fast.frames, fast_frames(fast_model, fast.state.latents))
    assert not np.array_equal(fast.frames, full.frames)


def test_a_live_world_streams_with_the_fast_decoder_and_resumes_with_it(fast_pipe, fast_model, image):
    assert fast_pipe.live_decoder() == "fast" and fast_pipe.health()["live_decoder"] == "fast"
    world = fast_pipe.open_world(prompt=PROMPT, image=image, seed=5, num_inference_steps=1)
    chunks = [world.step(ChunkActions(("w",))) for _ in range(3)]
    assert [c.frames.shape[0] for c in chunks] == [13, 16, 16]
    state = world.state()
    world.close()
    streamed = np.concatenate([c.frames for c in chunks])
    assert np.array_equal(streamed, fast_frames(fast_model, state.latents))
    # a world resumed from its state (decoder state rebuilt from the history) steps on as one long decode
    resumed = fast_pipe.resume_world(state)
    more = resumed.step(ChunkActions(("w",)))
    longer = resumed.state()
    resumed.close()
    assert more.frames.shape[0] == 16
    assert np.abs(more.frames.astype(int) - fast_frames(fast_model, longer.latents)[-16:].astype(int)).max() <= 1


def test_live_decoder_full_by_setting_and_fast_refused_without_weights(fast_pipe, tiny_pipeline, image, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_LIVE_DECODER", "full")
    assert fast_pipe.live_decoder() == "full"
    world = fast_pipe.open_world(prompt=PROMPT, image=image, seed=5, num_inference_steps=1)
    assert world.frames.decoder_name == "full"
    world.close()
    monkeypatch.setattr(tiny_pipeline, "fast_decoder", None)
    monkeypatch.setattr(tiny_pipeline, "fast_decoder_info", {"reason": "no TAEHV/taehv1_5.safetensors"})
    monkeypatch.delenv("WORLDPLAY_LIVE_DECODER")
    assert tiny_pipeline.live_decoder() == "full"
    health = tiny_pipeline.health()
    assert health["fast_decoder"] is None and "taehv1_5" in health["fast_decoder_missing"]
    with pytest.raises(ModelUnavailableError, match="fast decoder"):
        job(tiny_pipeline, image, decoder="fast")
    with pytest.raises(ModelUnavailableError):
        tiny_pipeline.open_world(prompt=PROMPT, image=image, decoder="fast")


def test_a_state_redecodes_with_the_full_vae_to_the_full_jobs_frames(fast_pipe, image):
    full = job(fast_pipe, image)
    pieces = []
    again = fast_pipe.redecode(full.state, on_frames=pieces.append)
    assert [len(p) for p in pieces] == [13, 16] and again.state is None
    assert np.array_equal(np.concatenate(pieces), full.frames) and np.array_equal(again.frames, full.frames)
    assert (again.seed, again.model, again.num_inference_steps) == (5, "ar_distilled", 1)
    streamed = []  # a long session's video is handed over without being kept (the worker's way)
    only = fast_pipe.redecode(full.state, on_frames=streamed.append, keep_frames=False)
    assert only.frames.shape == (0, 48, 80, 3) and only.num_frames == 29
    assert np.array_equal(np.concatenate(streamed), full.frames)
    with pytest.raises(ValueError, match="on_frames"):
        fast_pipe.redecode(full.state, keep_frames=False)
    fast = fast_pipe.redecode(full.state, decoder="fast")  # the fast decoder's frames of the same world
    assert np.array_equal(fast.frames, job(fast_pipe, image, decoder="fast").frames)


# ---- through the worker -------------------------------------------------------------------------------


def request(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes()), "pose": "w-3",
            "num_inference_steps": 1, **extra}


def test_a_job_with_decoder_fast_renders_through_run_job(real_pipeline, fast_model, monkeypatch):
    monkeypatch.setattr(real_pipeline, "fast_decoder", fast_model)
    out = run(request(decoder="fast"), job_id="fast-decoder")
    assert "error" not in out, out
    assert out["num_frames"] == 13


def test_decoder_fast_without_the_weights_is_a_coded_error_before_generation(real_pipeline, monkeypatch):
    monkeypatch.setattr(real_pipeline, "fast_decoder", None)
    monkeypatch.setattr(real_pipeline, "fast_decoder_info", {"reason": "WORLDPLAY_FAST_DECODER=0"})
    calls = []
    monkeypatch.setattr(real_pipeline, "generate", lambda *a, **k: calls.append(a))
    out = run(request(decoder="fast"), job_id="no-fast-decoder")
    assert out["error"].startswith("MODEL_UNAVAILABLE: ") and "WORLDPLAY_FAST_DECODER=0" in out["error"]
    assert not calls
    assert run(request(decoder="fastest"), job_id="bad")["error"].startswith("INVALID_INPUT: decoder")


# ---- the weights next to the models ---------------------------------------------------------------------


def test_model_paths_carry_the_fast_decoder_of_the_local_layout(tmp_path, tiny_models, monkeypatch):
    from pipeline.model_files.resolve import layout_paths

    assert layout_paths(tiny_models).fast_decoder.path is None  # the shared tiny models have none
    root = tmp_path / "models"
    write_tiny_fast_decoder(root / "TAEHV" / "taehv1_5.safetensors")
    found = layout_paths(root).fast_decoder
    assert found.path == root / "TAEHV" / "taehv1_5.safetensors" and found.source == "local"
    monkeypatch.setenv("WORLDPLAY_FAST_DECODER", "off")
    assert layout_paths(root).fast_decoder.path is None


# ---- the live socket --------------------------------------------------------------------------------------


def test_the_live_socket_says_which_decoder_streams_and_a_client_may_choose(real_pipeline, fast_model, s3_env,
                                                                             monkeypatch):
    import asyncio
    import json

    import httpx
    import websockets

    from tests.conftest import LiveServer
    from worker.live_session import LiveSettings

    monkeypatch.delenv("WORLDPLAY_LIVE_DECODER", raising=False)
    settings = LiveSettings(idle_seconds=30.0, max_seconds=300.0, max_queued_actions=4, token=None, origins=(),
                            allow_no_token=False, max_session_latents=1024)
    srv = LiveServer(settings)

    async def opened(**extra) -> dict:
        async with websockets.connect(srv.url) as ws:
            await ws.send(json.dumps({"type": "open", "prompt": PROMPT, "image_base64": b64(png_bytes()),
                                      "seed": 3, **extra}))
            reply = None
            while reply is None:
                msg = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(msg, str) and json.loads(msg)["type"] in ("ready", "error"):
                    reply = json.loads(msg)
            if reply["type"] == "ready":  # close the world (one per worker) before the next one opens
                await ws.send(json.dumps({"type": "close"}))
                while not (isinstance(msg, str) and json.loads(msg)["type"] == "closed"):
                    msg = await asyncio.wait_for(ws.recv(), 60)
            return reply

    try:
        monkeypatch.setattr(real_pipeline, "fast_decoder", None)
        monkeypatch.setattr(real_pipeline, "fast_decoder_info", {"reason": "WORLDPLAY_FAST_DECODER=0"})
        assert asyncio.run(opened())["decoder"] == "full"  # no weights: the full VAE streams
        assert httpx.get(srv.http + "/ping").json()["live_decoder"] == "full"
        refused = asyncio.run(opened(decoder="fast"))
        assert refused["type"] == "error" and refused["code"] == "MODEL_UNAVAILABLE", refused
        monkeypatch.setattr(real_pipeline, "fast_decoder", fast_model)
        assert asyncio.run(opened())["decoder"] == "fast"  # the weights: the fast decoder by default
        assert httpx.get(srv.http + "/ping").json()["live_decoder"] == "fast"
        assert asyncio.run(opened(decoder="full"))["decoder"] == "full"  # unless the client asks for the VAE
    finally:
        srv.stop()
