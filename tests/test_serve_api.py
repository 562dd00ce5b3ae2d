"""`python handler.py --rp_serve_api`: the SDK's local FastAPI imitation, with the REAL tiny
pipeline and moto S3. Note the SDK quirk: POST /run only stores the job, POST /status/{id} runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import S3_SECRET_KEY, b64, free_port, png_bytes, stop_process, worker_subprocess_env

from pipeline.video import probe_mp4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def api(s3_env, tiny_models, tmp_path):
    port = free_port()
    log_path = tmp_path / "api.log"
    env = worker_subprocess_env({**s3_env, "WORLDPLAY_MODEL_DIR": str(tiny_models)})
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(port)], cwd=REPO, env=env, stdout=log_file,
            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"API exited early: {log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/docs", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("API did not start within 90 s")
            time.sleep(0.2)
        yield base, log_path
    finally:
        stop_process(proc)


def test_run_then_status_and_errors(api, storage, tmp_path):
    base, log_path = api
    job = {"input": {"prompt": "a lighthouse", "image_base64": b64(png_bytes(64, 48)),
                     "pose": "w-3", "seed": 9}}
    submitted = requests.post(f"{base}/run", json=job, timeout=10).json()
    assert submitted["status"] == "IN_PROGRESS" and submitted["id"]
    status = requests.post(f"{base}/status/{submitted['id']}", json={}, timeout=300).json()
    assert status["status"] == "COMPLETED", status
    out = status["output"]
    assert out["num_frames"] == 13 and out["seed"] == 9
    assert out["minio_key"].endswith(f"/{submitted['id']}/video.mp4")
    video = requests.get(out["presigned_url"], timeout=10)
    assert video.status_code == 200
    (tmp_path / "v.mp4").write_bytes(video.content)
    info = probe_mp4(tmp_path / "v.mp4")
    assert (info.codec, info.num_frames, info.width, info.height) == (
        "h264", 13, out["width"], out["height"])

    bad = requests.post(f"{base}/runsync", json={"input": {"prompt": "p"}}, timeout=60).json()
    assert bad["status"] == "FAILED"
    assert bad["error"].startswith("INVALID_INPUT: exactly one of image_key")

    health = requests.post(f"{base}/runsync", json={"input": {"health": True}}, timeout=60).json()
    assert health["status"] == "COMPLETED"
    assert health["output"]["models_loaded"] is True and health["output"]["status"] == "ok"

    text = log_path.read_text()
    assert S3_SECRET_KEY not in text and S3_SECRET_KEY not in json.dumps([status, health])
    assert b64(png_bytes(64, 48))[:40] not in text
