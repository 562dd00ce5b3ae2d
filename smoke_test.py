#!/usr/bin/env python
"""Acceptance gate: render one video end to end and check the MP4 that comes back.

    python smoke_test.py --local          # embedded S3 (moto, 127.0.0.1) + tiny random model
    python smoke_test.py --endpoint ID    # a deployed RunPod endpoint + the real MinIO (MINIO_*)

Both modes upload an input image and a pose JSON, run a job that reads them by key, then download
the MP4 from the bucket AND through the presigned URL and check: H.264, yuv420p, width x height,
fps, frame count, faststart. ``--local`` then continues the world of that job (a second job with
``continue_from: <state_key>``, 4 new latents = 16 frames) and checks its video and new state.
Exit status 0 on success, 1 with a one-line reason on failure. ``run_local()`` / ``run_endpoint()`` are importable (the test-suite calls ``run_local``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, Optional

log = logging.getLogger("worldplay.smoke")

LOCAL_BUCKET = "worldplay-smoke"
LOCAL_ACCESS_KEY = "smoke-access"
LOCAL_SECRET_KEY = "smoke-secret-not-real"


class SmokeFailure(Exception):
    """The smoke test found a problem; the message says which."""


# ---- inputs -----------------------------------------------------------------------------------
def make_image_png(width: int = 832, height: int = 480, seed: int = 0) -> bytes:
    from PIL import Image

    from pipeline.video import synthetic_texture

    buf = io.BytesIO()
    Image.fromarray(synthetic_texture(width, height, seed)).save(buf, "PNG")
    return buf.getvalue()


def make_pose_json(num_latents: int = 4, step: float = 0.08, yaw_deg: float = 1.5) -> dict:
    """Upstream pose-JSON format: per latent a 4x4 camera-to-world and 3x3 pixel intrinsics;
    walks forward while turning slightly right."""
    import math

    k = [[969.697, 0.0, 960.0], [0.0, 969.697, 540.0], [0.0, 0.0, 1.0]]
    out = {}
    x = z = 0.0
    for i in range(num_latents):
        a = math.radians(yaw_deg * i)
        c, s = math.cos(a), math.sin(a)
        if i:
            x += s * step
            z += c * step
        out[str(i)] = {"extrinsic": [[c, 0.0, s, x], [0.0, 1.0, 0.0, 0.0], [-s, 0.0, c, z],
                                     [0.0, 0.0, 0.0, 1.0]], "K": k}
    return out


def expected_frames(num_latents: int) -> int:
    return 4 * (num_latents - 1) + 1


# ---- checks -----------------------------------------------------------------------------------
def check_mp4(data: bytes, *, width: Optional[int], height: Optional[int], fps: int,
              num_frames: int, what: str) -> Dict:
    from pipeline.video import is_faststart, probe_mp4

    if not data:
        raise SmokeFailure(f"{what}: empty download")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.mp4"
        path.write_bytes(data)
        try:
            info = probe_mp4(path)
        except Exception as exc:  # noqa: BLE001
            raise SmokeFailure(f"{what}: not a readable MP4 ({type(exc).__name__}: {exc})") from None
        faststart = is_faststart(path)
    problems = []
    if info.codec != "h264":
        problems.append(f"codec {info.codec} != h264")
    if info.pix_fmt != "yuv420p":
        problems.append(f"pix_fmt {info.pix_fmt} != yuv420p")
    if width is not None and (info.width, info.height) != (width, height):
        problems.append(f"size {info.width}x{info.height} != {width}x{height}")
    if abs(info.fps - fps) > 1e-3:
        problems.append(f"fps {info.fps} != {fps}")
    if info.num_frames != num_frames:
        problems.append(f"{info.num_frames} frames != {num_frames}")
    if not faststart:
        problems.append("moov atom is not before mdat (no faststart)")
    if problems:
        raise SmokeFailure(f"{what}: " + "; ".join(problems))
    return info.to_dict()


def verify_output(output: Dict, storage, *, fps: int, num_frames: int) -> Dict:
    import requests

    if not isinstance(output, dict):
        raise SmokeFailure(f"job output is not an object: {type(output).__name__}")
    if "error" in output:
        raise SmokeFailure(f"job failed: {output['error']}")
    for field in ("minio_key", "presigned_url", "width", "height", "num_frames", "fps"):
        if field not in output:
            raise SmokeFailure(f"job output lacks {field!r}")
    if output["num_frames"] != num_frames:
        raise SmokeFailure(f"job reports {output['num_frames']} frames, expected {num_frames}")
    from_bucket = storage.get_bytes(output["minio_key"], 2 * 1024**3)
    resp = requests.get(output["presigned_url"], timeout=(5, 120))
    if resp.status_code != 200:
        raise SmokeFailure(f"presigned URL answered HTTP {resp.status_code}")
    if resp.content != from_bucket:
        raise SmokeFailure("presigned URL bytes differ from the object in the bucket")
    info = check_mp4(from_bucket, width=output["width"], height=output["height"], fps=fps,
                     num_frames=num_frames, what=f"s3://{storage.bucket}/{output['minio_key']}")
    return {"video": info, "bytes": len(from_bucket)}


# ---- local mode -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def embedded_s3(bucket: str = LOCAL_BUCKET) -> Iterator[Dict[str, str]]:
    """moto's S3 on 127.0.0.1 (free port); yields the MINIO_* environment for it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SmokeFailure("embedded S3 did not start") from None
                time.sleep(0.05)
        yield {
            "MINIO_ENDPOINT": f"http://127.0.0.1:{port}",
            "MINIO_ACCESS_KEY": LOCAL_ACCESS_KEY,
            "MINIO_SECRET_KEY": LOCAL_SECRET_KEY,
            "MINIO_BUCKET": bucket,
            "MINIO_REGION": "us-east-1",
        }
    finally:
        server.stop()


@contextlib.contextmanager
def patched_env(values: Dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class Watcher:
    """``--watch``: what a client polling ``GET /status`` of a deployed endpoint sees, locally.

    Receives the worker's progress updates (the payloads RunPod would put in ``/status``), prints
    each one, and the moment the first carries ``preview_url`` prints a viewer link that plays it
    (the viewer served on 127.0.0.1 by :mod:`tools.serve_viewer`)."""

    def __init__(self, out=None, viewer_base: Optional[str] = None, hold: float = 0.0):
        self.out = out or sys.stdout
        self.hold = hold  # seconds the viewer and the S3 stay up after the job (to replay the preview)
        self.updates: list = []
        self.viewer_base = viewer_base
        self.link: Optional[str] = None
        self._server = None

    def start(self) -> "Watcher":
        if self.viewer_base is None:
            from tools.serve_viewer import start

            self._server, self.viewer_base = start(port=0)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __call__(self, job: dict, payload: dict) -> None:
        self.updates.append(dict(payload))
        shown = {k: v for k, v in payload.items() if k in ("stage", "step", "total", "preview_segments")}
        print(f"progress {json.dumps(shown)}", file=self.out, flush=True)
        if self.link is None and payload.get("preview_url"):
            from tools.serve_viewer import viewer_link

            self.link = viewer_link(self.viewer_base, payload["preview_url"])
            print(f"preview ready: {self.link}", file=self.out, flush=True)


def run_local(*, model_dir: Optional[str] = None, num_latents: int = 4, fps: int = 24,
              keep_dir: Optional[str] = None, watch: Optional[Watcher] = None) -> Dict:
    """Embedded S3 + tiny model + one job through the handler. Returns a report; raises
    SmokeFailure. ``model_dir``: an existing tiny-model root (else one is written to a temp dir).
    ``keep_dir``: also save the MP4 there, with the input image and the camera path plot.
    ``watch``: receives the job's progress updates as RunPod's ``/status`` would carry them (the
    bucket then allows cross-origin GETs, so the served viewer can play the preview)."""
    import asyncio

    from worker import job as worker_job
    from worker.storage import Storage

    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if model_dir is None:
            from pipeline.tools.tiny import write_tiny_models

            model_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="worldplay-tiny-"))
            write_tiny_models(Path(model_dir), models=("ar_distilled",))
        s3_env = stack.enter_context(embedded_s3())
        stack.enter_context(patched_env({**s3_env, "WORLDPLAY_MODEL_DIR": str(model_dir),
                                         "WORLDPLAY_MODES": "ar"}))
        worker_job.reset_state(loader=worker_job.default_loader)
        stack.callback(worker_job.reset_state)

        storage = Storage.from_env()
        storage.ensure_bucket()
        run_id = uuid.uuid4().hex[:8]
        image_key = f"smoke/{run_id}/input.png"
        pose_key = f"smoke/{run_id}/pose.json"
        image_png, pose = make_image_png(), make_pose_json(num_latents)
        storage.put_bytes(image_key, image_png, "image/png")
        storage.put_bytes(pose_key, json.dumps(pose).encode(), "application/json")
        job = {"id": f"smoke-{run_id}", "input": {
            "prompt": "a sunlit stone courtyard with a fountain, camera walking forward",
            "image_key": image_key, "pose_key": pose_key, "seed": 7, "fps": fps,
            "output": {"key_prefix": "smoke-out"}}}
        if watch is None:
            output = asyncio.run(worker_job.handler(job))
        else:  # the handler's own code path, with the progress updates RunPod would relay
            import boto3  # moto's S3 takes the CORS rule the viewer on another origin needs

            boto3.client("s3", endpoint_url=s3_env["MINIO_ENDPOINT"], region_name="us-east-1",
                         aws_access_key_id=LOCAL_ACCESS_KEY, aws_secret_access_key=LOCAL_SECRET_KEY
                         ).put_bucket_cors(Bucket=storage.bucket, CORSConfiguration={"CORSRules": [{
                             "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"],
                             "AllowedHeaders": ["*"]}]})
            watch.start()
            stack.callback(watch.stop)
            output = worker_job.run_job(job, progress=worker_job.ProgressReporter(
                job, interval=0.5, sender=watch, enabled=True))
        report = verify_output(output, storage, fps=fps, num_frames=expected_frames(num_latents))
        report["continuation"] = continue_world(output, storage, fps=fps, run_id=run_id)
        if keep_dir:
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            target = Path(keep_dir) / "smoke.mp4"
            target.write_bytes(storage.get_bytes(output["minio_key"], 2 * 1024**3))
            report["saved"] = str(target)
            # beside it, what went in: the input image and the camera path seen from above
            from pipeline.tools.camera_plot import plot_path

            (Path(keep_dir) / "smoke_input.png").write_bytes(image_png)
            plot_path(pose, Path(keep_dir) / "smoke_path.png", title="smoke test pose JSON")
            report["saved_inputs"] = [str(Path(keep_dir) / "smoke_input.png"),
                                      str(Path(keep_dir) / "smoke_path.png")]
        report.update(output=output, seconds=round(time.perf_counter() - t_start, 2))
        if watch is not None and watch.hold > 0 and watch.link:
            print(f"the viewer and the S3 stay up {watch.hold:g} s more (Ctrl-C ends): {watch.link}",
                  file=watch.out, flush=True)
            try:
                time.sleep(watch.hold)
            except KeyboardInterrupt:
                pass
        return report


def continue_world(output: Dict, storage, *, fps: int, run_id: str, new_latents: int = 4) -> Dict:
    """A world session: continue the first job's state by `new_latents` latents (4 frames each) and
    check the video, the new state_key and the session length."""
    import asyncio

    from worker import job as worker_job

    state_key = output.get("state_key")
    if not state_key:
        raise SmokeFailure("job output has no state_key (world state not saved)")
    job = {"id": f"smoke-{run_id}-2", "input": {"continue_from": state_key, "pose": f"right-{new_latents}",
                                                "fps": fps, "output": {"key_prefix": "smoke-out"}}}
    second = asyncio.run(worker_job.handler(job))
    report = verify_output(second, storage, fps=fps, num_frames=4 * new_latents)
    if not second.get("state_key") or second.get("session_latents") != output["session_latents"] + new_latents:
        raise SmokeFailure(f"continuation reports session_latents {second.get('session_latents')}, expected "
                           f"{output['session_latents'] + new_latents}")
    if second["seed"] != output["seed"]:
        raise SmokeFailure("continuation did not keep the session's seed")
    report["state_key"] = second["state_key"]
    return report


# ---- endpoint mode ----------------------------------------------------------------------------
def run_endpoint(endpoint_id: str, *, timeout: float = 900.0, poll: float = 3.0,
                 num_latents: int = 4, fps: int = 24, api_base: str = "https://api.runpod.ai/v2",
                 mode: str = "ar") -> Dict:
    """Same check against a deployed endpoint (RUNPOD_API_KEY) and the real MinIO (MINIO_*)."""
    import requests

    from worker.storage import Storage

    api_key = os.environ.get("RUNPOD_API_KEY")
    if not api_key:
        raise SmokeFailure("RUNPOD_API_KEY is not set")
    storage = Storage.from_env()
    if not storage.bucket_exists():
        raise SmokeFailure(f"bucket {storage.bucket!r} does not exist")
    run_id = uuid.uuid4().hex[:8]
    image_key = f"smoke/{run_id}/input.png"
    pose_key = f"smoke/{run_id}/pose.json"
    storage.put_bytes(image_key, make_image_png(), "image/png")
    storage.put_bytes(pose_key, json.dumps(make_pose_json(num_latents)).encode(), "application/json")
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    payload = {"input": {"prompt": "a sunlit stone courtyard with a fountain",
                         "image_key": image_key, "pose_key": pose_key, "seed": 7, "fps": fps,
                         "mode": mode, "output": {"key_prefix": "smoke-out"}}}
    t_start = time.monotonic()
    resp = requests.post(f"{api_base}/{endpoint_id}/run", json=payload, headers=headers,
                         timeout=(10, 60))
    if resp.status_code != 200:
        raise SmokeFailure(f"POST /run answered HTTP {resp.status_code}")
    request_id = resp.json().get("id")
    if not request_id:
        raise SmokeFailure("POST /run returned no id")
    status = "IN_QUEUE"
    body: Dict = {}
    while time.monotonic() - t_start < timeout:
        time.sleep(poll)
        r = requests.get(f"{api_base}/{endpoint_id}/status/{request_id}", headers=headers,
                         timeout=(10, 60))
        if r.status_code != 200:
            log.warning("status poll answered HTTP %s", r.status_code)
            continue
        body = r.json()
        status = body.get("status", "")
        if status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            break
        log.info("job %s: %s (%.0f s)", request_id, status, time.monotonic() - t_start)
    else:
        requests.post(f"{api_base}/{endpoint_id}/cancel/{request_id}", headers=headers,
                      timeout=(10, 30))
        raise SmokeFailure(f"job {request_id} still {status} after {timeout:.0f} s (cancelled)")
    if status != "COMPLETED":
        raise SmokeFailure(f"job {request_id} ended {status}: {body.get('error') or ''}".strip())
    report = verify_output(body.get("output") or {}, storage, fps=fps,
                           num_frames=expected_frames(num_latents))
    report.update(output=body.get("output"), seconds=round(time.monotonic() - t_start, 2),
                  delay_ms=body.get("delayTime"), execution_ms=body.get("executionTime"))
    return report


# ---- CLI --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true",
                       help="embedded S3 on 127.0.0.1 + tiny random model (needs nothing external)")
    where.add_argument("--endpoint", metavar="ID", help="deployed RunPod endpoint id")
    parser.add_argument("--model-dir", help="--local: use this tiny-model root instead of writing one")
    parser.add_argument("--latents", type=int, default=4,
                        help="latents in the pose JSON (AR: a multiple of 4; default 4 = 13 frames)")
    parser.add_argument("--timeout", type=float, default=900.0, help="--endpoint: seconds to wait")
    parser.add_argument("--save", metavar="DIR", help="--local: also save the MP4 into DIR, beside "
                                                      "the input image and a plot of the camera path")
    parser.add_argument("--watch", action="store_true",
                        help="--local: print the progress updates /status would carry and, once the live "
                             "preview exists, a viewer link that plays it (viewer served on 127.0.0.1)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="S",
                        help="--watch: keep the viewer and the S3 up S seconds after the job, to replay it")
    args = parser.parse_args(argv)

    from worker.job import configure_logging

    configure_logging(os.environ.get("WORLDPLAY_LOG_LEVEL", "WARNING"))
    try:
        if args.local:
            report = run_local(model_dir=args.model_dir, num_latents=args.latents,
                               keep_dir=args.save, watch=Watcher(hold=args.hold) if args.watch else None)
        else:
            report = run_endpoint(args.endpoint, timeout=args.timeout, num_latents=args.latents)
    except SmokeFailure as exc:
        print(f"SMOKE TEST FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - report, do not dump a traceback on users
        from worker.errors import from_exception

        err = from_exception(exc)
        print(f"SMOKE TEST FAILED: {err.code}: {err.message}", file=sys.stderr)
        return 1
    video = report["video"]
    print(f"SMOKE TEST PASSED: {video['codec']} {video['width']}x{video['height']} "
          f"{video['num_frames']} frames @ {video['fps']:g} fps, {report['bytes']} bytes, "
          f"{report['seconds']} s")
    print(json.dumps({k: v for k, v in report["output"].items() if k != "presigned_url"},
                     indent=2))
    if report.get("saved"):
        print(f"saved {report['saved']}")
        for path in report.get("saved_inputs", []):
            print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
