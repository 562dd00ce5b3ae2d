"""The live server (worker.live) on a real uvicorn on 127.0.0.1, driven with the `websockets` client.

Tiny real pipeline on the CPU, moto S3 from conftest. The equivalence test steps a live world and
runs one queue job (worker.job.run_job) with the live world's equivalent action list and seed, then
compares the two saved states' latents with torch.equal.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from tests.conftest import LiveServer, b64, png_bytes

import websockets  # noqa: E402


def _settings(**kw):
    from worker.live_session import LiveSettings

    base = dict(idle_seconds=30.0, max_seconds=300.0, max_queued_actions=4, token=None, origins=(),
                allow_no_token=False, max_session_latents=1024)
    base.update(kw)
    return LiveSettings(**base)


@pytest.fixture
def server(request):
    made = []

    def start(**kw):
        srv = LiveServer(_settings(**kw))
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def recv_json(ws, timeout=60):
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


async def expect_close(ws, timeout=20):
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""


# ---- no world needed ---------------------------------------------------------------------------
def test_ping_index_and_busy_second_client(server, fake_pipeline):
    import httpx

    from worker import job

    srv = server()
    job.MODELS.pipe = None
    assert httpx.get(srv.http + "/ping").status_code == 204  # initialising
    job.MODELS.get(("ar",))
    assert httpx.get(srv.http + "/ping").status_code == 200
    assert httpx.get(srv.http + "/").status_code in (200, 404)

    async def go():
        async with websockets.connect(srv.url) as first:
            await asyncio.sleep(0.1)
            async with websockets.connect(srv.url) as second:
                t0 = time.monotonic()
                code, reason = await expect_close(second)
                assert code == 1013 and "LIVE_BUSY" in reason and "retry" in reason
                assert time.monotonic() - t0 < 2
            await first.send(json.dumps({"type": "pause"}))
            err = await recv_json(first)
            assert err["type"] == "error" and "open" in err["message"]

    run(go())


@pytest.mark.parametrize("frame, needle", [
    ("{not json", "not valid JSON"),
    ('{"type": "teleport"}', "unknown message type 'teleport'"),
    ('{"prompt": "x"}', "needs a 'type'"),
    ('[1, 2]', "JSON object"),
    ('{"type": "open", "image_key": "a.png"}', "prompt is required"),
    ('{"type": "open", "prompt": "x"}', "exactly one of"),
    ('{"type": "actions", "keys": ["w", "s"]}', "opposite"),
    ('{"type": "actions", "keys": ["jump"]}', "keys.0"),
    ('{"type": "actions", "keys": ["w"], "speed": 5}', "speed"),
    ('{"type": "prompt"}', "prompt: field required"),
    ('{"type": "actions", "keys": [], "pad": "' + "x" * 70000 + '"}', "limit is 65536"),
])
def test_bad_messages_are_answered_by_name(server, frame, needle):
    srv = server()

    async def go():
        async with websockets.connect(srv.url) as ws:
            await ws.send(frame)
            err = await recv_json(ws)
            assert err["type"] == "error" and err["code"] == "INVALID_MESSAGE", err
            assert needle in err["message"], err
            await ws.send("{}")  # the socket goes on
            assert (await recv_json(ws))["code"] == "INVALID_MESSAGE"

    run(go())


def test_binary_oversized_token_and_origin(server):
    srv = server(token="s3cret-token", origins=("https://play.example",))

    async def go():
        async with websockets.connect(srv.url + "?token=s3cret-token") as ws:
            await ws.send(b"\x00\x01")
            assert (await expect_close(ws))[0] == 1003
        async with websockets.connect(srv.url + "?token=wrong") as ws:
            code, reason = await expect_close(ws)
            assert code == 1008 and "LIVE_UNAUTHORIZED" in reason
        async with websockets.connect(srv.url) as ws:  # token expected in the open message
            await ws.send(json.dumps({"type": "open", "prompt": "x", "image_key": "a.png", "token": "nope"}))
            code, reason = await expect_close(ws)
            assert code == 1008 and "token" in reason
        async with websockets.connect(srv.url, additional_headers={"Authorization": "Bearer s3cret-token"},
                                      origin="https://evil.example") as ws:
            code, reason = await expect_close(ws)
            assert code == 1008 and "origin" in reason
        async with websockets.connect(srv.url, additional_headers={"Authorization": "Bearer s3cret-token"},
                                      origin="https://play.example", max_size=None) as ws:
            await ws.send(json.dumps({"type": "open", "prompt": "x", "image_base64": "A" * (11 * 2**20)}))
            assert (await expect_close(ws))[0] == 1009  # over the transport cap

    run(go())


def test_exposure_rule():
    from worker.live import check_exposure

    check_exposure("127.0.0.1", _settings())
    check_exposure("0.0.0.0", _settings(token="t"))
    check_exposure("0.0.0.0", _settings(allow_no_token=True))
    with pytest.raises(SystemExit, match="WORLDPLAY_LIVE_TOKEN"):
        check_exposure("0.0.0.0", _settings())


# ---- the real engine -----------------------------------------------------------------------------
@pytest.fixture
def live_env(real_pipeline, monkeypatch):
    return real_pipeline


async def open_world(ws, image, **extra):
    await ws.send(json.dumps({"type": "open", "prompt": "a quiet street", "image_base64": image,
                              "seed": 7, **extra}))
    ready = await recv_json(ws)
    assert ready["type"] == "ready", ready
    init = await asyncio.wait_for(ws.recv(), 30)
    assert isinstance(init, bytes) and init[4:8] == b"ftyp"
    return ready, init


async def next_chunk(ws):
    record = await recv_json(ws)
    assert record["type"] == "chunk", record
    fragment = await asyncio.wait_for(ws.recv(), 30)
    assert isinstance(fragment, bytes) and fragment[4:8] == b"moof" and len(fragment) == record["bytes"]
    return record, fragment


def _decoded_frames(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_live_equals_queue(server, live_env, s3_env, storage):
    """Live world stepped A1..A3 == one queue job with closed.actions and the same seed."""
    import torch

    from pipeline.generation.world_state import WorldState
    from worker import job

    srv = server()
    image = b64(png_bytes(96, 64))
    steps = [{"keys": ["w"]}, {"keys": ["w", "left"], "degrees": 5}, {"keys": ["right"]}]

    async def go():
        async with websockets.connect(srv.url) as ws:
            ready, init = await open_world(ws, image)
            assert ready["mime"].startswith('video/mp4; codecs="avc1.')
            data, frames = init, 0
            # valid JSON the schema takes, refused by the action rules (a turn of 30 degrees while moving
            # would be labelled a diagonal move): an error, and the world goes on
            await ws.send(json.dumps({"type": "actions", "keys": ["w", "left"], "degrees": 30}))
            err = await recv_json(ws)
            assert err["type"] == "error" and err["code"] == "INVALID_MESSAGE" and "below 30" in err["message"], err
            await ws.send(json.dumps({"type": "prompt", "prompt": "a quiet street at night"}))
            await ws.send(json.dumps({"type": "prompt", "prompt": "a quiet street"}))  # back: same world
            for i, step in enumerate(steps):
                await ws.send(json.dumps({"type": "actions", **step}))
                record, fragment = await next_chunk(ws)
                assert record["index"] == i and record["frames"] == (13 if i == 0 else 16)
                data += fragment
                frames += record["frames"]
            await ws.send(json.dumps({"type": "save"}))
            saved = await recv_json(ws)
            assert saved["type"] == "saved" and saved["state_key"].endswith("/world.safetensors")
            await ws.send(json.dumps({"type": "close"}))
            closed = await recv_json(ws)
            code, _ = await expect_close(ws)
            assert code == 1000
            return closed, data, frames

    closed, data, frames = run(go())
    assert closed["type"] == "closed" and closed["reason"] == "close" and closed["chunks"] == 3
    assert _decoded_frames(data) == frames == closed["frames"] == 45
    recording = storage.get_bytes(closed["minio_key"], 50 * 2**20)
    assert _decoded_frames(recording) == 45
    live_state = WorldState.from_bytes(storage.get_bytes(closed["state_key"], 2**28))

    out = job.run_job({"id": "queue-twin", "input": {"prompt": "a quiet street", "image_base64": image,
                                                     "actions": closed["actions"], "seed": closed["seed"]}})
    assert "error" not in out, out
    queue_state = WorldState.from_bytes(storage.get_bytes(out["state_key"], 2**28))
    assert live_state.num_latents == queue_state.num_latents == 12
    assert torch.equal(live_state.latents, queue_state.latents)


def test_disconnect_mid_chunk_keeps_finished_chunks(server, live_env, s3_env, storage):
    from pipeline.generation.world_state import WorldState

    srv = server()

    async def go():
        async with websockets.connect(srv.url) as ws:
            await open_world(ws, b64(png_bytes(96, 64)))
            await ws.send(json.dumps({"type": "actions", "keys": ["w"]}))
            await next_chunk(ws)
            await ws.send(json.dumps({"type": "actions", "keys": ["a"]}))
            await asyncio.sleep(0.01)  # the second chunk is in flight: leave
        for _ in range(300):
            if srv.state.records and srv.state.records[-1].closed:
                return srv.state.records[-1].closed
            await asyncio.sleep(0.05)

    closed = run(go())
    assert closed["reason"] == "disconnect"
    state = WorldState.from_bytes(storage.get_bytes(closed["state_key"], 2**28))
    assert state.num_latents == 4 * closed["chunks"] and closed["chunks"] in (1, 2)
    assert _decoded_frames(storage.get_bytes(closed["minio_key"], 2**26)) == closed["frames"]


def test_idle_timeout_and_continuous_mode(server, live_env, s3_env):
    srv = server(idle_seconds=3.0)

    async def go():
        async with websockets.connect(srv.url) as ws:
            ready, _ = await open_world(ws, b64(png_bytes(96, 64)), drive="continuous")
            assert ready["drive"] == "continuous"
            await ws.send(json.dumps({"type": "actions", "keys": ["w"]}))
            records = []
            for _ in range(3):  # the world moves by itself; the player keeps holding W (not idle)
                records.append((await next_chunk(ws))[0])
                await ws.send(json.dumps({"type": "actions", "keys": ["w"]}))
            assert [r["index"] for r in records] == [0, 1, 2]
            assert records[-1]["position"][2] > 0  # walked forward (+z)
            await ws.send(json.dumps({"type": "pause"}))
            while True:  # idle: no message for 3 s ends the session
                msg = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(msg, str) and json.loads(msg)["type"] == "closed":
                    return json.loads(msg)

    closed = run(go())
    assert closed["reason"] == "idle" and closed["chunks"] >= 3 and closed["state_key"]


def test_bidirectional_refused_and_bad_image(server, live_env, s3_env):
    srv = server()

    async def go():
        async with websockets.connect(srv.url) as ws:
            await ws.send(json.dumps({"type": "open", "prompt": "x", "image_base64": b64(png_bytes()),
                                      "mode": "bidirectional"}))
            assert (await recv_json(ws))["code"] == "MODE_UNAVAILABLE"
            await ws.send(json.dumps({"type": "open", "prompt": "x", "image_base64": b64(b"not an image")}))
            assert (await recv_json(ws))["code"] == "INVALID_IMAGE"
            await ws.send(json.dumps({"type": "open", "prompt": "x", "image_url": "http://169.254.169.254/a.png"}))
            assert (await recv_json(ws))["code"] == "IMAGE_URL_FORBIDDEN"

    run(go())
