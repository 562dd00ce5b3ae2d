"""Sequence-parallel ranks that fail or hang (gloo ranks on the CPU, the tiny model): a follower stuck in its
own work, a cancel while rank 0 waits for it in a collective, a follower that fails before it joins the
group and one that dies inside the rendezvous are each answered with a coded error within a bounded time,
and a later job (or start) does not wait again. The faults are injected in the follower process only
(tests/rank_faults.py)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import b64, code_of, png_bytes, run
from rank_faults import FaultyLoader

from pipeline.errors import RankFailedError
from pipeline.generation import ranks
from pipeline.generation.ranks import CANCEL_GRACE_S, for_followers, load_ranked
from pipeline.model_files.resolve import resolve_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paths(tiny_models):
    return resolve_models(["ar_distilled"], model_dir=tiny_models, allow_download=False, set_offline=False)


@pytest.fixture
def short_windows(monkeypatch):
    """A 3 s stall window; a 60 s collective timeout as the backstop, so nothing here can wait 600 s."""
    monkeypatch.setenv("WORLDPLAY_SP_STALL_SECONDS", "3")
    monkeypatch.setenv("WORLDPLAY_SP_TIMEOUT", "60")
    monkeypatch.setenv("WORLDPLAY_SP_START_TIMEOUT", "120")


def _request(**kw):
    from PIL import Image

    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    image = Image.open(io.BytesIO(png_bytes(96, 64))).convert("RGB")
    return GenerationRequest(prompt="a harbour", image=image, camera=parse_pose("w-7"), mode="ar",
                             num_inference_steps=2, seed=4, **kw)


def test_stuck_follower_fails_the_job_within_the_stall_window(s3_env, tiny_models, paths, short_windows, monkeypatch):
    """A follower alive but stuck before a collective: rank 0's watchdog gives the group up after the stall
    window (RANK_FAILED, refresh_worker, the stuck rank named), and the next job fails at once."""
    from worker import job as worker_job

    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
    loaded = []

    def loader(modes):
        loaded.append(load_ranked(FaultyLoader(paths, ("ar_distilled",), fault="hang_in_rollout"), "cpu", 2))
        return loaded[-1]

    worker_job.reset_state(loader=loader)
    job = {"prompt": "a harbour", "image_base64": b64(png_bytes(96, 64)), "pose": "w-7", "mode": "ar",
           "num_inference_steps": 2, "seed": 4}
    try:
        worker_job.MODELS.get(("ar_distilled",))  # the ranks start outside the timed part
        started = time.monotonic()
        out = run(job)
        elapsed = time.monotonic() - started
        assert code_of(out) == "RANK_FAILED" and out["refresh_worker"] is True, out
        assert "rank 1 stuck" in out["error"] and "WORLDPLAY_SP_STALL_SECONDS=3" in out["error"], out
        assert elapsed < 30, elapsed  # 3 s window (+ preparing the inputs), not 60 s or 600 s

        started = time.monotonic()
        again = run(job, job_id="job-2")
        assert code_of(again) == "RANK_FAILED" and again["refresh_worker"] is True
        assert "rank 1 stuck" in again["error"]  # the first reason is kept
        assert time.monotonic() - started < 5
        health = worker_job.health_report()["model"]["sequence_parallel"]
        assert health["ranks_alive"] == [True, False] and health["stall_seconds"] == 3.0
    finally:
        for pipe in loaded:
            pipe.close()


def test_cancel_reaches_the_job_while_a_follower_is_stuck(paths, short_windows, monkeypatch):
    """The cancel decision is a collective, so a stuck rank would block it: rank 0's watchdog polls the
    cancel itself and answers within CANCEL_GRACE_S (the stall window here is 60 s)."""
    monkeypatch.setenv("WORLDPLAY_SP_STALL_SECONDS", "60")
    pipe = load_ranked(FaultyLoader(paths, ("ar_distilled",), fault="hang_in_rollout"), "cpu", 2)
    cancel = threading.Event()
    asked: list[float] = []

    def cancel_once_stuck():
        # rank 0 inside a collective (entered > left) that rank 1 has not reached
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            c = pipe.counters[:]
            if c[0] > c[1] and c[2] < c[0]:
                asked.append(time.monotonic())
                cancel.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_stuck, daemon=True)
    try:
        watcher.start()
        with pytest.raises(RankFailedError) as info:
            pipe.generate(_request(), should_cancel=cancel.is_set)
        answered = time.monotonic()
        watcher.join(timeout=5)
        assert asked, "rank 0 never waited for the stuck follower"
        assert "cancelled while rank 1 stuck" in info.value.message
        assert answered - asked[0] < CANCEL_GRACE_S + 10, answered - asked[0]
        with pytest.raises(RankFailedError, match="unusable"):
            pipe.generate(_request())
    finally:
        pipe.close()


def test_follower_failing_before_it_joins(paths, short_windows):
    """The follower's own reason, at once (rank 0 never entered the rendezvous); a second start fails the
    same way just as fast instead of waiting."""
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(RankFailedError) as info:
            load_ranked(FaultyLoader(paths, ("ar_distilled",), fault="raise_before_join"), "cpu", 2)
        assert "RuntimeError: rank 1 cannot see its GPU (injected by the test)" in info.value.message
        assert time.monotonic() - started < 45
    assert ranks._start_blocked is None
    assert not torch.distributed.is_initialized()


def test_follower_dying_inside_the_rendezvous(tiny_models, tmp_path):
    """Rank 0 is left in init_process_group: the start fails at once with RANK_FAILED (the follower's exit
    code), and a later start in that process fails at once too (torch counted the failed group; the worker
    is replaced). In a child process: that process cannot form a group again."""
    script = tmp_path / "rendezvous.py"
    script.write_text(f"""
import json, os, sys, time
sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]
os.environ.update(WORLDPLAY_SP_TIMEOUT="60", WORLDPLAY_SP_START_TIMEOUT="120")
from rank_faults import FaultyLoader
from pipeline.generation.ranks import load_ranked
from pipeline.model_files.resolve import resolve_models

if __name__ == "__main__":  # spawn re-imports this file in the follower
    paths = resolve_models(["ar_distilled"], model_dir={str(tiny_models)!r}, allow_download=False, set_offline=False)
    results = []
    for _ in range(2):
        started = time.monotonic()
        try:
            load_ranked(FaultyLoader(paths, ("ar_distilled",), fault="exit_in_rendezvous"), "cpu", 2)
            results.append(["started"])
        except Exception as exc:
            results.append([getattr(exc, "code", type(exc).__name__), str(exc), time.monotonic() - started])
    print("RESULT " + json.dumps(results), flush=True)
    os._exit(0)  # rank 0's thread still waits in the rendezvous
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150, cwd=ROOT)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stdout + done.stderr
    first, second = json.loads(line[0][len("RESULT "):])
    assert first[0] == "RANK_FAILED" and "rank 1 failed (exit code 4)" in first[1], first
    assert first[2] < 45, first
    assert second[0] == "RANK_FAILED" and "cannot start the sequence-parallel ranks again" in second[1], second
    assert second[2] < 1, second


def test_followers_get_the_history_without_its_latents(tiny_pipeline):
    """A continuation's request reaches the followers without the history's latents, image latent and image
    embedding (rank 0 broadcasts the DiT's inputs): shapes only, so the checks and lengths still hold."""
    from pipeline.generation.camera import parse_pose

    state = tiny_pipeline.generate(_request()).state
    request = _request()
    request = type(request)(prompt="a harbour", image=None, camera=parse_pose("right-7"), mode="ar",
                            num_inference_steps=2, seed=4, history=state)
    slim = for_followers(request)
    for name in ("latents", "image_latent", "vision"):
        kept = getattr(slim.history, name)
        assert kept.device.type == "meta" and kept.shape == getattr(state, name).shape
    for name in ("c2w", "intrinsics", "actions"):
        assert torch.equal(getattr(slim.history, name), getattr(state, name))
    assert slim.history.num_latents == state.num_latents and slim.camera is request.camera
    assert request.history is state and state.latents.device.type == "cpu"  # the caller's request is untouched
    full, sent = len(pickle.dumps(request.history)), len(pickle.dumps(slim.history))
    assert sent < full - state.latents.numel() * 4 + 4096, (full, sent)
    tiny_pipeline.validate(slim)  # what a follower checks first still passes
    assert for_followers(_request()).history is None


def test_nccl_error_handling_is_set_before_the_group_forms():
    from pipeline.dit.parallel import NCCL_ERROR_HANDLING, set_nccl_error_handling

    env = {}
    assert set_nccl_error_handling(env) == NCCL_ERROR_HANDLING == {
        "TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    env = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}  # an operator's own choice stays
    assert set_nccl_error_handling(env)["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
