"""``python -m tools.live_bench``: the live server's own work per chunk, at the GPU's cadence.

The real server (worker.live on uvicorn, 127.0.0.1) and a real `websockets` client drive a world
in continuous mode; the world is a stand-in that sleeps ``--gap`` seconds per chunk (the H100's AR
chunk time, docs/PERFORMANCE.md) and hands over 832x480 frames of a synthetic camera pan (13, then
16 per chunk). Measured: per chunk, the server's work from the chunk's hand-over to its fragment sent
(fMP4 encode, recording, JSON + binary send), the GPU thread's wait between two steps (what the
server adds to the critical path in continuous mode; <= 5 % of a chunk's generation is the target)
and the stream's bitrate (<= 4 Mbit/s at 832x480, 24 fps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time


class PacedWorld:
    """The documented World API with a sleep standing in for the GPU."""

    def __init__(self, frames, gap: float, first: float, fps: int = 24):
        self._frames, self.gap, self.first = frames, gap, first
        self.height, self.width = frames.shape[1:3]
        self.fps, self.seed, self.mode, self.prompt = fps, 0, "ar", "bench"
        self.num_latents = 0
        self.index = 0
        self.spans = []  # (start, end) of every step, perf_counter

    def set_prompt(self, prompt):
        self.prompt = prompt

    def step(self, actions, should_cancel=None, callback=None):
        import numpy as np
        from types import SimpleNamespace

        t0 = time.perf_counter()
        time.sleep(self.first if self.index == 0 else self.gap)
        start = 0 if self.index == 0 else 13 + 16 * (self.index - 1)
        n = 13 if self.index == 0 else 16
        c2w = np.tile(np.eye(4), (4, 1, 1))
        chunk = SimpleNamespace(index=self.index, frames=self._frames[start:start + n], c2w=c2w,
                                action={"key": "w", "moves": 3 if self.index == 0 else 4}, timings={})
        self.index += 1
        self.num_latents += 4
        self.spans.append((t0, time.perf_counter()))
        return chunk

    def state(self):
        return None

    def actions(self):
        return []

    def close(self):
        pass


class PacedPipe:
    modes = ("ar",)

    def __init__(self, world):
        self.world = world

    def open_world(self, **kwargs):
        return self.world

    def health(self):
        return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.live_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--gap", type=float, default=2.9, help="seconds per 16-frame chunk (H100 AR: 2.9)")
    parser.add_argument("--first", type=float, default=1.42, help="seconds to the first chunk (H100: 1.42)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)

    import os

    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET"):
        os.environ.pop(name, None)  # no bucket: nothing is uploaded at the end
    import websockets

    from pipeline.video import synthetic_pan
    from worker import job
    from worker.live import BackgroundServer, create_app
    from worker.live_session import LiveSettings

    frames = synthetic_pan(13 + 16 * (args.chunks - 1), args.width, args.height)
    world = PacedWorld(frames, args.gap, args.first)
    job.reset_state(loader=lambda modes: PacedPipe(world))
    job.MODELS.get(("ar",))
    app = create_app(LiveSettings(), preload=False)
    server = BackgroundServer(app)
    port = server.port

    async def drive():
        import base64
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, "PNG")
        received = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/session", max_size=None) as ws:
            await ws.send(json.dumps({"type": "open", "prompt": "bench", "drive": "continuous",
                                      "image_base64": base64.b64encode(buf.getvalue()).decode()}))
            ready = json.loads(await ws.recv())
            await ws.recv()  # init segment
            await ws.send(json.dumps({"type": "actions", "keys": ["w"]}))
            while len(received) < args.chunks:
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    received.append((time.perf_counter(), len(msg)))
            await ws.send(json.dumps({"type": "pause"}))
            await ws.send(json.dumps({"type": "close"}))
            while True:
                msg = await ws.recv()
                if isinstance(msg, str) and json.loads(msg)["type"] == "closed":
                    return ready, received

    ready, received = asyncio.run(drive())
    server.stop()
    record = app.state.live.records[-1] if app.state.live.records else None
    deadline = time.time() + 10
    while record is None and time.time() < deadline:
        time.sleep(0.05)
        record = app.state.live.records[-1] if app.state.live.records else None
    stats = [s for s in record.stats][: args.chunks]
    spans = world.spans[: args.chunks]
    waits = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
    server_s = [s.server for s in stats]
    encode_s = [s.encode for s in stats]
    total_bytes = sum(s.bytes for s in stats)
    total_frames = sum(s.frames for s in stats)
    mbps = total_bytes * 8 / (total_frames / 24) / 1e6
    steady = [s.bytes * 8 / (s.frames / 24) / 1e6 for s in stats[1:]]
    print(f"{os.cpu_count()} CPUs, {args.width}x{args.height}, {args.chunks} chunks, first {args.first} s, "
          f"then one every {args.gap} s; mime {ready['mime']}")
    print(f"server work per chunk (hand-over -> fragment sent): median {statistics.median(server_s):.3f} s, "
          f"max {max(server_s):.3f} s; of which fMP4 encode median {statistics.median(encode_s):.3f} s")
    print(f"GPU thread idle between steps (critical path): median {statistics.median(waits) * 1000:.1f} ms, "
          f"max {max(waits) * 1000:.1f} ms = {max(waits) / args.gap * 100:.2f} % of a chunk's generation")
    print(f"stream: {total_bytes} bytes for {total_frames} frames = {mbps:.2f} Mbit/s "
          f"(16-frame chunks: max {max(steady):.2f} Mbit/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
