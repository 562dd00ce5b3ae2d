"""Sequence parallelism (WORLDPLAY_SEQUENCE_PARALLEL): gloo ranks on the CPU must give the latents of one
rank, through the CLI and through the handler, for AR and bidirectional; a dead rank, cancellation and
bad settings behave as documented."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import torch
import torch.multiprocessing as tmp_mp
from conftest import b64, png_bytes
from safetensors.torch import load_file

from pipeline.tools.demo import main as cli
from pipeline.dit.parallel import parse_size
from pipeline.errors import SequenceParallelConfigError

TOLERANCE = 1e-5


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


# ---- settings ---------------------------------------------------------------------------------


def test_size_setting():
    assert parse_size(None, heads=16, gpus=8, device_type="cuda") == 1
    assert parse_size("auto", heads=16, gpus=8, device_type="cuda") == 8
    assert parse_size("auto", heads=16, gpus=0, device_type="cpu") == 1
    assert parse_size(" 4 ", heads=16, gpus=4, device_type="cuda") == 4
    assert parse_size("2", heads=2, gpus=0, device_type="cpu") == 2  # gloo ranks on the CPU


@pytest.mark.parametrize("value, gpus, words", [
    ("3", 8, "does not divide the transformer's 16 attention heads"),
    ("8", 4, "only 4 GPU(s) are visible"),
    ("two", 4, "not a number"),
    ("0", 4, "at least 1"),
])
def test_size_setting_errors(value, gpus, words):
    with pytest.raises(SequenceParallelConfigError) as info:
        parse_size(value, heads=16, gpus=gpus, device_type="cuda")
    assert words in str(info.value) and info.value.code == "SEQUENCE_PARALLEL_CONFIG"


# ---- layouts ------------------------------------------------------------------------------------


def _layout_rank(rank: int, world: int, port: int) -> None:
    """One rank of the layout check; an assertion that fails here fails the spawning test with its
    traceback (torch.multiprocessing.spawn re-raises it)."""
    from pipeline.dit.parallel import init_process_group

    sp = init_process_group(rank, world, port, "cpu", 60)
    frames, per_frame, heads, dim = 3, 7, 6, 4  # 7 tokens per frame: padded to 9 over 3 ranks
    torch.manual_seed(0)  # the same full tensors on every rank
    tokens = torch.randn(2, frames * per_frame, heads * dim)
    layout = sp.layout(frames, per_frame)
    try:
        mine = layout.shard(tokens)
        assert mine.shape == (2, frames * 3, heads * dim)
        assert torch.equal(layout.gather(mine), tokens)
        q, none, v = layout.to_heads(mine.view(2, -1, heads, dim), None, 2 * mine.view(2, -1, heads, dim))
        full = tokens.view(2, frames * per_frame, heads, dim)
        group = slice(rank * heads // world, (rank + 1) * heads // world)
        assert none is None
        assert torch.equal(q, full[:, :, group]) and torch.equal(v, 2 * full[:, :, group])
        back, = layout.to_seq(q)  # each rank hands back its heads: all heads of its own slice return
        assert torch.equal(back.flatten(2), mine)
        padded = torch.nn.functional.pad(tokens.view(2, frames, per_frame, -1), (0, 0, 0, 2))
        assert torch.equal(mine, padded[:, :, rank * 3:(rank + 1) * 3].reshape_as(mine))  # zeros past a frame
    finally:
        torch.distributed.destroy_process_group()


def test_layouts_round_trip_on_three_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp_mp.spawn(_layout_rank, args=(3, port), nprocs=3, join=True)


# ---- a follower rank: no encoders, no VAE --------------------------------------------------------


def _generate_rank(rank: int, world: int, port: int, root: str, requests: list, out: str) -> None:
    """One rank of the follower check: rank 0 loads what the worker loads, a follower what its loader's
    for_follower() gives; each rank saves the latents it ends every request with."""
    from pipeline.dit.parallel import init_process_group
    from pipeline.generation.ranks import PathsLoader
    from pipeline.model_files.resolve import resolve_models

    sp = init_process_group(rank, world, port, "cpu", 120)
    try:
        loader = PathsLoader(resolve_models(["ar_distilled"], model_dir=root, allow_download=False, set_offline=False), ("ar_distilled",))
        pipe = (loader.for_follower() if rank else loader)("cpu")
        pipe.use_sequence_parallel(sp)
        assert (pipe.encoders is None and pipe.vae is None) == (rank > 0)
        from pipeline.errors import ImageError, RankZeroFailedError

        # rank 0 fails while preparing its inputs (no picture): it says so, the follower stops too, and
        # the ranks stay in step for the next request
        with pytest.raises(RankZeroFailedError if rank else ImageError):
            pipe.generate(requests[0].__class__(prompt="x", image=None, camera=requests[0].camera, mode="ar"))
        for i, request in enumerate(requests):
            result = pipe.generate(request)
            if rank:
                assert not hasattr(result, "frames")  # nothing decoded here
            torch.save(result.latents if rank else result.state.latents, f"{out}/{rank}-{i}.pt")
        torch.distributed.barrier()  # the follower is done before rank 0's decode: wait for it here
    finally:
        # rank 0 hosts the store: it leaves after the follower (else gloo may abort the follower's exit)
        import os
        import time

        marker = f"{out}/left-{rank}"
        if rank == 0:
            deadline = time.monotonic() + 60
            while not os.path.exists(f"{out}/left-1") and time.monotonic() < deadline:
                time.sleep(0.05)
        torch.distributed.destroy_process_group()
        open(marker, "w").close()


def test_follower_holds_no_encoders_and_denoises_the_same(tiny_models, tiny_pipeline, tmp_path):
    """A follower loads neither the encoders nor the VAE, receives rank 0's inputs (their shapes first) and
    ends with the latents of one rank: a fresh AR video with guidance (both CFG branches), then a world
    session continued from it (through RankedPipeline the history reaches the follower without its latents:
    ranks.for_followers)."""
    import io

    from PIL import Image

    from pipeline.errors import PipelineError
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest
    from pipeline.generation.ranks import PathsLoader
    from pipeline.model_files.resolve import resolve_models

    image = Image.open(io.BytesIO(png_bytes(96, 64))).convert("RGB")
    first = GenerationRequest(prompt="a harbour", image=image, camera=parse_pose("w-7"), mode="ar",
                              negative_prompt="blur", num_inference_steps=2, guidance_scale=3.0, seed=5)
    one = tiny_pipeline.generate(first)
    later = GenerationRequest(prompt="a harbour", image=None, camera=parse_pose("right-7"), mode="ar",
                              num_inference_steps=2, seed=5, history=one.state)
    two = tiny_pipeline.generate(later)
    paths = resolve_models(["ar_distilled"], model_dir=tiny_models, allow_download=False, set_offline=False)
    with pytest.raises(PipelineError, match="without encoders"):  # a follower's pipeline cannot work alone
        PathsLoader(paths, ("ar_distilled",)).for_follower()("cpu").generate(first)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp_mp.spawn(_generate_rank, args=(2, port, str(tiny_models), [first, later], str(tmp_path)), nprocs=2,
                 join=True)
    for i, reference in enumerate((one.state.latents, two.state.latents)):
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{rank}-{i}.pt")
            assert got.shape == reference.shape
            assert relative(reference, got) <= TOLERANCE, (i, rank)

    # the same through rank 0's RankedPipeline: the follower process loads for_follower() and reports it;
    # rank 0's failure before the rollout leaves the group usable
    from pipeline.errors import ImageError
    from pipeline.generation.ranks import load_ranked

    pipe = load_ranked(PathsLoader(paths, ("ar_distilled",)), "cpu", 2)
    try:
        assert pipe.health()["sequence_parallel"]["followers"] == [{"rank": 1, "encoders": False, "vae": False}]
        with pytest.raises(ImageError):
            pipe.generate(GenerationRequest(prompt="x", image=None, camera=parse_pose("w-7"), mode="ar"))
        assert pipe.broken is None
        assert relative(one.state.latents, pipe.generate(first).state.latents) <= TOLERANCE
        # a world session: the follower gets the request without the history's latents (rank 0 broadcasts them)
        assert relative(two.state.latents, pipe.generate(later).state.latents) <= TOLERANCE
    finally:
        pipe.close()


# ---- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, pose", [("ar", "w-7"), ("bidirectional", "w-15")])
def test_cli_two_ranks_give_the_latents_of_one(mode, pose, tmp_path, capsys):
    latents = {}
    for ranks in (1, 2):
        path = tmp_path / f"latents-{ranks}.safetensors"
        code = cli(["--tiny", "--mode", mode, "--pose", pose, "--steps", "2", "--guidance", "3", "--seed", "7",
                    "--sp", str(ranks), "--out", str(tmp_path / f"{ranks}.mp4"), "--state-out", str(path)])
        assert code == 0
        assert json.loads(capsys.readouterr().out)["ranks"] == ranks
        latents[ranks] = load_file(str(path))["latents"]
    assert latents[1].shape == latents[2].shape
    assert relative(latents[1], latents[2]) <= TOLERANCE


def test_cli_rejects_ranks_that_do_not_divide_the_heads(tmp_path, capsys):
    # the tiny DiT has 2 heads: refused from the checkpoint's header, before any rank starts
    assert cli(["--tiny", "--sp", "3", "--out", str(tmp_path / "x.mp4")]) == 1
    err = capsys.readouterr().err
    assert "error: SEQUENCE_PARALLEL_CONFIG" in err and "does not divide" in err
    assert not torch.distributed.is_initialized()


# ---- the handler --------------------------------------------------------------------------------


@pytest.fixture
def worker_env(s3_env, tiny_models, monkeypatch):
    from worker import job as worker_job

    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
    monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("WORLDPLAY_MODES", "ar,bidirectional")
    monkeypatch.setenv("WORLDPLAY_WARMUP", "1")  # the warm-up runs on every rank too
    loaded = []

    def start(ranks: int):
        """A fresh worker with `ranks` ranks; returns the latents of each job it runs."""
        for pipe in loaded:
            if hasattr(pipe, "close"):
                pipe.close()
        monkeypatch.setenv("WORLDPLAY_SEQUENCE_PARALLEL", str(ranks))
        captured = []

        def loader(modes):
            pipe = worker_job.default_loader(modes)
            loaded.append(pipe)
            real = pipe.generate

            def generate(request, *args, **kwargs):
                result = real(request, *args, **kwargs)
                captured.append(result.state.latents)
                return result

            pipe.generate = generate
            return pipe

        worker_job.reset_state(loader=loader)
        return captured

    yield start
    for pipe in loaded:
        if hasattr(pipe, "close"):
            pipe.close()
    worker_job.reset_state()


def _job(mode: str) -> dict:
    pose = {"ar": "w-7", "bidirectional": "w-15"}[mode]
    return {"id": f"sp-{mode}", "input": {"prompt": "a harbour", "image_base64": b64(png_bytes(96, 64)),
                                          "pose": pose, "mode": mode, "seed": 4, "num_inference_steps": 2,
                                          "guidance_scale": 2.5}}


def test_handler_on_two_ranks(worker_env):
    """Same latents as one rank for both modes; health shows the ranks; a cancel reaches every rank; a
    rank that dies mid-job fails that job and every later one with RANK_FAILED and refresh_worker."""
    from worker import job as worker_job

    latents = {}
    for ranks in (1, 2):
        captured = worker_env(ranks)
        for mode in ("ar", "bidirectional"):
            out = asyncio.run(worker_job.handler(_job(mode)))
            assert "error" not in out, out
            assert out["mode"] == mode and out["num_frames"] == {"ar": 29, "bidirectional": 61}[mode]
        health = worker_job.health_report()
        assert health["model"]["sequence_parallel"]["world_size"] == ranks
        if ranks == 2:  # the follower loaded its transformers only
            assert health["model"]["sequence_parallel"]["followers"] == [{"rank": 1, "encoders": False, "vae": False}]
        assert set(health["model"]["warm_up_seconds"]) == {"ar_distilled", "bidirectional"}
        latents[ranks] = list(captured)
    assert len(latents[1]) == len(latents[2]) == 2
    for one, two in zip(latents[1], latents[2]):
        assert relative(one, two) <= TOLERANCE

    # cancelled at the first denoising step (seen by rank 0 only): every rank stops at that step, and
    # the ranks stay in step for the next job
    cancel = threading.Event()
    progress = worker_job.ProgressReporter(
        _job("ar"), interval=0.0, enabled=True,
        sender=lambda job, payload: cancel.set() if payload["stage"] == "denoising" else None)
    out = worker_job.run_job(_job("ar"), cancel_event=cancel, progress=progress)
    assert out["error"].startswith("CANCELLED:") and "refresh_worker" not in out
    assert "error" not in asyncio.run(worker_job.handler(_job("ar")))
    assert relative(latents[1][0], captured[-1]) <= TOLERANCE

    # a rank that dies mid-job
    pipe, _ = worker_job.MODELS.get(("ar", "bidirectional"))
    follower = pipe.processes[0]

    def kill(job, payload):
        if payload["stage"] == "denoising" and follower.is_alive():
            follower.kill()
            follower.join(timeout=30)

    progress = worker_job.ProgressReporter(_job("ar"), interval=0.0, enabled=True, sender=kill)
    out = worker_job.run_job(_job("ar"), progress=progress)
    assert out["error"].startswith("RANK_FAILED:") and out["refresh_worker"] is True, out
    again = asyncio.run(worker_job.handler(_job("bidirectional")))
    assert again["error"].startswith("RANK_FAILED:") and again["refresh_worker"] is True
    health = worker_job.health_report()["model"]["sequence_parallel"]
    assert health["world_size"] == 2 and health["ranks_alive"] == [True, False]


# ---- the benchmark ------------------------------------------------------------------------------


def test_bench_runs_on_two_ranks(tmp_path):
    from pipeline.tools.bench import main as bench

    out = tmp_path / "bench.json"
    assert bench(["--tiny", "--sp", "2", "--modes", "ar", "--steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["sequence_parallel"] == 2 and report["runs"][0]["sequence_parallel"] == 2
    assert report["runs"][0]["frames"] == 29 and report["runs"][0]["dit_seconds"] > 0
    assert not torch.distributed.is_initialized()  # the ranks were shut down
