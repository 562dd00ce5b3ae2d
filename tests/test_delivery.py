"""Where the video goes: the bucket (checked before any model work) or inline as video_base64 when
no storage is configured; incomplete settings answer every job and health with what is missing."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FakePipeline, b64, code_of, png_bytes, run, stop_process, worker_subprocess_env

from pipeline.video import probe_mp4
from worker import delivery
from worker import job as worker_job
from worker.errors import WorkerError

REPO = Path(__file__).resolve().parents[1]
MINIO_VARS = delivery.STORAGE_VARS




def base_input(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes()), "pose": "w-3", **extra}


class RecordingLoader:
    """A model loader that records whether the worker got as far as loading models."""

    def __init__(self):
        self.calls = []
        self.pipe = FakePipeline()

    def __call__(self, modes):
        self.calls.append(modes)
        return self.pipe


@pytest.fixture
def no_storage(fake_pipeline, monkeypatch):
    """No MINIO_* at all (the fake pipeline and an isolated temp dir stay)."""
    for name in MINIO_VARS + ("MINIO_REGION", "MINIO_RETRY_ATTEMPTS", delivery.INLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    return fake_pipeline


def decode_mp4(out, tmp_path) -> "object":
    data = base64.b64decode(out["video_base64"], validate=True)
    path = tmp_path / "inline.mp4"
    path.write_bytes(data)
    return probe_mp4(path)


# ---- no-storage mode ---------------------------------------------------------------------------
def test_no_storage_returns_the_video_inline(no_storage, s3_env, tmp_path):
    out = run(base_input(seed=5, output={"key_prefix": "ignored"}))
    assert "error" not in out, out
    info = decode_mp4(out, tmp_path)
    assert (info.codec, info.num_frames) == ("h264", 13) == ("h264", out["num_frames"])
    assert (info.width, info.height) == (out["width"], out["height"])
    for field in delivery.BUCKET_FIELDS:  # nothing that points at a bucket
        assert field not in out
    assert out["seed"] == 5 and set(out["timings"]) >= {"validate", "generate", "upload"}
    assert not any(Path(s3_env["WORLDPLAY_TMPDIR"]).iterdir())


def test_bucket_mode_has_no_inline_video(fake_pipeline, storage):
    out = run(base_input())
    assert "error" not in out and "video_base64" not in out
    assert out["bucket"] == storage.bucket and out["minio_key"].endswith("/video.mp4")


def test_inline_video_over_the_cap_is_storage_not_configured(no_storage, monkeypatch, s3_env):
    monkeypatch.setenv(delivery.INLINE_ENV, "1000")
    out = run(base_input())
    assert code_of(out) == "STORAGE_NOT_CONFIGURED"
    assert "over the 1000-byte limit" in out["error"] and "MINIO_ENDPOINT" in out["error"]
    assert "refresh_worker" not in out
    assert not any(Path(s3_env["WORLDPLAY_TMPDIR"]).iterdir())  # the MP4 was removed


@pytest.mark.parametrize("value", ["many", "-5", "1.5"])
def test_malformed_inline_cap(no_storage, monkeypatch, value):
    monkeypatch.setenv(delivery.INLINE_ENV, value)
    out = run(base_input())
    assert code_of(out) == "STORAGE_NOT_CONFIGURED" and delivery.INLINE_ENV in out["error"]
    assert not no_storage.calls


def test_inline_cap_zero_turns_inline_off_before_generation(no_storage, monkeypatch):
    monkeypatch.setenv(delivery.INLINE_ENV, "0")
    out = run(base_input())
    assert code_of(out) == "STORAGE_NOT_CONFIGURED" and "inline results are off" in out["error"]
    assert not no_storage.calls


@pytest.mark.parametrize("keyed", [{"image_key": "in/a.png", "image_base64": None},
                                   {"input_image_minio_path": "in/a.png", "image_base64": None},
                                   {"pose_key": "in/pose.json", "pose": None}])
def test_keyed_inputs_need_storage(no_storage, monkeypatch, keyed):
    loader = RecordingLoader()
    worker_job.reset_state(loader=loader)
    data = base_input()
    for key, value in keyed.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    out = run(data)
    assert code_of(out) == "STORAGE_NOT_CONFIGURED"
    assert ("image_key" if "pose_key" not in keyed else "pose_key") in out["error"]
    assert "no MINIO_* variables set" in out["error"]
    assert loader.calls == []


def test_health_in_no_storage_mode(no_storage):
    out = run({"health": True})
    assert out["status"] == "ok"
    st = out["storage"]
    assert st["mode"] == "inline" and st["missing"] == list(MINIO_VARS)
    assert st["inline_max_bytes"] == delivery.DEFAULT_INLINE_MAX_BYTES == 6 * 2**20


def test_default_inline_cap_fits_runpods_payload_limit():
    """base64 grows the MP4 by 4/3; the result must stay under the 10 MB /run payload limit with
    room for the other fields."""
    assert delivery.DEFAULT_INLINE_MAX_BYTES * 4 / 3 + 10_000 < 10_000_000


# ---- incomplete settings: the worker answers, naming what is missing ---------------------------
@pytest.mark.parametrize("missing", [["MINIO_SECRET_KEY"], ["MINIO_ENDPOINT", "MINIO_BUCKET"]])
def test_incomplete_storage_settings(fake_pipeline, monkeypatch, missing, no_secret_in_logs):
    loader = RecordingLoader()
    for name in missing:
        monkeypatch.setenv(name, "  ")  # blank counts as missing
    worker_job.reset_state(loader=loader)
    out = run(base_input())
    assert code_of(out) == "STORAGE_NOT_CONFIGURED"
    assert "missing " + ", ".join(missing) in out["error"]
    assert loader.calls == []
    health = run({"health": True})
    assert health["status"] == "degraded" and health["storage"]["mode"] == "incomplete"
    assert health["storage"]["missing"] == missing
    assert health["storage"]["error"].startswith("STORAGE_NOT_CONFIGURED: missing")


def test_storage_setup_modes():
    full = {name: "x" for name in MINIO_VARS}
    assert delivery.storage_setup(full).mode == "bucket"
    assert delivery.storage_setup({}).mode == "inline"
    assert delivery.storage_setup({**full, "MINIO_BUCKET": ""}).mode == "incomplete"
    assert delivery.storage_setup({"MINIO_BUCKET": "videos"}).missing == MINIO_VARS[:3]


# ---- the bucket is checked in the validate stage, before models load --------------------------
def test_missing_bucket_fails_before_models_load(s3_env, monkeypatch):
    loader = RecordingLoader()
    monkeypatch.setenv("MINIO_BUCKET", "bucket-that-is-not-there")
    worker_job.reset_state(loader=loader)
    t0 = time.monotonic()
    out = run(base_input())
    assert code_of(out) == "BUCKET_NOT_FOUND" and "bucket-that-is-not-there" in out["error"]
    assert loader.calls == [] and not loader.pipe.calls
    assert time.monotonic() - t0 < 10
    assert not worker_job.MODELS.loaded


def test_unreachable_storage_fails_before_models_load(s3_env, monkeypatch):
    loader = RecordingLoader()
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("MINIO_RETRY_ATTEMPTS", "1")
    worker_job.reset_state(loader=loader)
    out = run(base_input())
    assert code_of(out) == "STORAGE_UNAVAILABLE"
    assert loader.calls == []


def test_bucket_check_is_cached_per_worker(fake_pipeline, storage):
    before = delivery.BUCKET_CHECK.checks
    for i in range(3):
        assert "error" not in run(base_input(), job_id=f"cached-{i}")
    assert delivery.BUCKET_CHECK.checks - before == 1
    worker_job.reset_state(loader=worker_job.MODELS.loader)  # a new client is checked again
    assert "error" not in run(base_input(), job_id="cached-new")
    assert delivery.BUCKET_CHECK.checks - before == 2


class _FakeStorage:
    bucket, endpoint = "videos", "minio:9000"

    def __init__(self, answers):
        self.answers = list(answers)
        self.asked = 0

    def bucket_exists(self):
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_bucket_check_ttl_and_failures_are_not_remembered():
    now = [100.0]
    check = delivery.BucketCheck(ttl=30.0, clock=lambda: now[0])
    st = _FakeStorage([True, True, False, WorkerError("STORAGE_UNAVAILABLE", "down"), True])
    check.ensure(st)
    now[0] += 29.0
    check.ensure(st)
    assert st.asked == 1  # within the TTL: no request
    now[0] += 2.0
    check.ensure(st)
    assert st.asked == 2  # expired: asked again
    now[0] += 31.0
    with pytest.raises(WorkerError) as exc:
        check.ensure(st)
    assert exc.value.code == "BUCKET_NOT_FOUND"
    with pytest.raises(WorkerError) as exc:
        check.ensure(st)  # the failure was not remembered: asked again at once
    assert exc.value.code == "STORAGE_UNAVAILABLE"
    check.ensure(st)
    assert st.asked == 5


# ---- the container entrypoint with incomplete storage settings: the worker runs and answers ------
def _entrypoint(extra: dict, job: dict) -> subprocess.CompletedProcess:
    env = worker_subprocess_env({"WORLDPLAY_PYTHON": sys.executable, "WORLDPLAY_ALLOW_CPU": "1",
                                 "WORLDPLAY_ALLOW_DOWNLOAD": "0", "WORLDPLAY_PRELOAD": "0", **extra})
    for name in MINIO_VARS:
        env.pop(name, None)
    env.update({"MINIO_ENDPOINT": "http://127.0.0.1:9", "MINIO_ACCESS_KEY": "ak", "MINIO_BUCKET": "videos"})
    return subprocess.run(["bash", str(REPO / "entrypoint.sh"), "--test_input", json.dumps(job)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_entrypoint_with_a_missing_secret_starts_and_answers(tmp_path):
    """MINIO_SECRET_KEY missing: the container does not exit; health names the variable and a job
    gets STORAGE_NOT_CONFIGURED (not a crash loop with jobs stuck IN_QUEUE)."""
    extra = {"RUNPOD_HF_CACHE": str(tmp_path / "none"), "WORLDPLAY_MODEL_DIR": str(tmp_path / "none")}
    health = _entrypoint(extra, {"input": {"health": True}})
    text = health.stdout + health.stderr
    assert health.returncode == 0, text[-3000:]
    assert "missing storage variable(s): MINIO_SECRET_KEY" in text  # the entrypoint's warning
    assert "'mode': 'incomplete'" in text and "'missing': ['MINIO_SECRET_KEY']" in text
    job = _entrypoint(extra, {"input": base_input()})
    text = job.stdout + job.stderr
    assert job.returncode == 1, text[-3000:]  # local test mode: a returned error exits 1
    assert "STORAGE_NOT_CONFIGURED: missing MINIO_SECRET_KEY" in text
    assert "loading models" not in text


# ---- local test mode and the Hub tests, with no storage at all --------------------------------
def _no_minio_env(extra: dict) -> dict:
    env = worker_subprocess_env(extra)
    for name in MINIO_VARS:
        env.pop(name, None)
    return env


def test_python_handler_runs_test_input_json_without_storage(tiny_models, tmp_path):
    """`python handler.py` with no MINIO_* set runs ./test_input.json and returns video_base64."""
    shipped = json.loads((REPO / "test_input.json").read_text())
    assert set(shipped) == {"input"}
    assert "image_key" not in shipped["input"] and "pose_key" not in shipped["input"]
    proc = subprocess.run([sys.executable, "handler.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=_no_minio_env({"WORLDPLAY_MODEL_DIR": str(tiny_models),
                                                          "WORLDPLAY_TMPDIR": str(tmp_path)}))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Using test_input.json" in text and "completed successfully" in text
    # the SDK's log line shows the start of the MP4 (an ISO-BMFF 'ftyp' box) in base64
    match = re.search(r"'video_base64': '([A-Za-z0-9+/]{16})", text)
    assert match, text[-2000:]
    assert b"ftyp" in base64.b64decode(match.group(1))
    assert "minio_key" not in text


def test_hub_tests_pass_without_storage(real_pipeline, monkeypatch, tmp_path):
    """Every input of .runpod/tests.json succeeds through the real handler (tiny model) with the
    test environment of tests.json and no MINIO_* at all."""
    hub_tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    for item in hub_tests["config"].get("env", []):
        if item["key"] != "RUNPOD_INIT_TIMEOUT":
            monkeypatch.setenv(item["key"], str(item["value"]))
    for name in MINIO_VARS:
        monkeypatch.delenv(name, raising=False)
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    assert hub_tests["tests"]
    for test in hub_tests["tests"]:
        out = run(test["input"], job_id=f"hub-{test['name']}")
        assert "error" not in out, (test["name"], out)
        if "health" in test["input"]:
            assert out["status"] == "ok" and out["storage"]["mode"] == "inline"
        else:
            info = decode_mp4(out, tmp_path)
            assert info.num_frames == out["num_frames"] == 13
            # the tiny random model renders 80x48 noise by design (README, Quick start)
            assert (info.width, info.height) == (out["width"], out["height"]) == (80, 48)


def test_http_imitation_without_storage_and_the_readme_decode_step(tiny_models, tmp_path):
    """`python handler.py --rp_serve_api` with no MINIO_*: /runsync with test_input.json returns the
    video inline, and the documented decode one-liner (docs/LOCAL.md) turns the answer into a playable
    out.mp4."""
    import requests
    from conftest import free_port

    readme = (REPO / "docs" / "LOCAL.md").read_text()
    match = re.search(r'\| python -c "(import base64, json, sys; open\(\'out\.mp4\'.*?)"\n', readme)
    assert match, "docs/LOCAL.md: no decode step for video_base64"
    decode_snippet = match.group(1)

    port = free_port()
    log_path = tmp_path / "api.log"
    env = _no_minio_env({"WORLDPLAY_MODEL_DIR": str(tiny_models), "WORLDPLAY_TMPDIR": str(tmp_path)})
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host",
                                 "127.0.0.1", "--rp_api_port", str(port)], cwd=REPO, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                if requests.get(f"{base}/docs", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "API did not start within 90 s"
            time.sleep(0.2)
        answer = requests.post(f"{base}/runsync", data=(REPO / "test_input.json").read_bytes(),
                               headers={"Content-Type": "application/json"}, timeout=300)
        assert answer.json()["status"] == "COMPLETED", answer.text[:500]
        decoded = subprocess.run([sys.executable, "-c", decode_snippet], input=answer.text, text=True,
                                 cwd=tmp_path, capture_output=True, timeout=60)
        assert decoded.returncode == 0, decoded.stderr
        info = probe_mp4(tmp_path / "out.mp4")
        assert (info.codec, info.num_frames) == ("h264", answer.json()["output"]["num_frames"])
    finally:
        stop_process(proc)
