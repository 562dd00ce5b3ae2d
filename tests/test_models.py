"""Every published WorldPlay checkpoint by name (docs/MODELS.md): end-to-end tiny jobs with each model through the
worker, WORLDPLAY_MODELS (only those resolved and loaded), MODEL_UNAVAILABLE, the mode alias, world states that
continue only on their model, the health report and the CLI's --model."""

from __future__ import annotations

import pytest
from conftest import b64, code_of, png_bytes, run

from pipeline.checkpoints import CHECKPOINTS, MODEL_NAMES
from worker import job as worker_job


@pytest.fixture(scope="module")
def all_models(tiny_models):
    """The real tiny pipeline with all four checkpoints, each from its own folder and file."""
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import resolve_models

    paths = resolve_models("all", model_dir=tiny_models, allow_download=False, set_offline=False)
    return WorldPlayPipeline.from_paths(paths, device="cpu")


@pytest.fixture
def served(s3_env, tiny_models, all_models, monkeypatch):
    loads = []

    def loader(models):
        loads.append(tuple(models))
        return all_models

    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
    monkeypatch.setenv("WORLDPLAY_MODELS", "all")
    monkeypatch.delenv("WORLDPLAY_MODES", raising=False)
    worker_job.reset_state(loader=loader)
    yield loads
    worker_job.reset_state()


def job(**extra):
    return {"prompt": "a quiet harbour", "image_base64": b64(png_bytes(64, 48)), "seed": 3, **extra}


def test_the_pipeline_holds_each_checkpoint_under_its_name(all_models, tiny_models):
    assert all_models.models == MODEL_NAMES and all_models.modes == ("ar", "bidirectional")
    ids = all_models.checkpoint_ids
    assert len(set(ids.values())) == 4  # four distinct files, four fingerprints
    health = all_models.health()
    assert health["models"] == list(MODEL_NAMES)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_tiny_job_with_each_model(served, model, storage):
    rollout = CHECKPOINTS[model].rollout
    frames = 13 if rollout == "ar" else 61
    out = run(job(model=model, num_frames=frames, num_inference_steps=2), job_id=f"m-{model}")
    assert "error" not in out, out
    assert (out["model"], out["mode"], out["num_frames"]) == (model, rollout, frames)
    assert out["guidance_scale"] == CHECKPOINTS[model].guidance  # the model's published default
    assert served == [MODEL_NAMES]  # loaded once, every served model


def test_each_model_defaults_to_its_published_steps(served):
    out = run(job(model="ar_rl", pose="w-3", num_inference_steps=None))
    assert "error" not in out, out
    assert (out["num_inference_steps"], out["guidance_scale"]) == (50, 6.0)


def test_mode_alias_runs_the_model_it_names(served):
    out = run(job(mode="ar", num_inference_steps=1))
    assert "error" not in out and out["model"] == "ar_distilled" and out["mode"] == "ar", out
    assert code_of(run(job(mode="ar", model="ar_rl"))) == "INVALID_INPUT"


def test_a_model_the_worker_does_not_serve(s3_env, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_distilled,bidirectional")
    worker_job.reset_state(loader=lambda models: pytest.fail("nothing may load for a refused job"))
    out = run(job(model="ar_rl"))
    assert code_of(out) == "MODEL_UNAVAILABLE"
    assert "ar_distilled, bidirectional" in out["error"]
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_rl")
    assert code_of(run(job(mode="ar"))) == "MODE_UNAVAILABLE"  # by the older name: the older code
    assert "ar_rl" in run(job())["error"]
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_turbo")
    assert code_of(run(job())) == "MODEL_UNAVAILABLE"


def test_only_the_served_models_are_resolved(s3_env, tiny_models, monkeypatch):
    """The default loader resolves (and would download) only the checkpoints of WORLDPLAY_MODELS."""
    import pipeline.model_files.resolve as resolve

    asked = []
    real = resolve.resolve_models
    monkeypatch.setattr(resolve, "resolve_models", lambda models, **kw: asked.append(list(models)) or real(
        models, model_dir=tiny_models, allow_download=False, set_offline=False))
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_rl")
    monkeypatch.setenv("WORLDPLAY_DEVICE", "cpu")
    pipe = worker_job.default_loader(worker_job.configured_models())
    assert asked == [["ar_rl"]] and pipe.models == ("ar_rl",)


def test_legacy_worldplay_modes_still_work():
    assert worker_job.configured_models({"WORLDPLAY_MODES": "ar,bidirectional"}) == ("ar_distilled", "bidirectional")
    assert worker_job.configured_models({"WORLDPLAY_MODES": "bidirectional", "WORLDPLAY_MODELS": "ar"}) == ("ar",)
    assert worker_job.configured_modes({"WORLDPLAY_MODELS": "ar_rl,ar"}) == ("ar",)


def test_a_state_continues_only_on_its_model(served, storage):
    first = run(job(model="ar_rl", pose="w-3", num_inference_steps=1), job_id="s-1")
    assert "error" not in first, first
    again = run({"continue_from": first["state_key"], "pose": "w-4", "num_inference_steps": 1}, job_id="s-2")
    assert "error" not in again and again["model"] == "ar_rl", again  # the state's model by default
    other = run({"continue_from": first["state_key"], "pose": "w-4", "model": "ar"}, job_id="s-3")
    assert code_of(other) == "STATE_MISMATCH" and "ar_rl" in other["error"]
    by_mode = run({"continue_from": first["state_key"], "pose": "w-4", "mode": "ar"}, job_id="s-4")
    assert code_of(by_mode) == "STATE_MISMATCH"  # mode ar is ar_distilled, not the state's ar_rl


def test_health_lists_models(served):
    report = run({"health": True})
    assert report["models"] == list(MODEL_NAMES) and report["modes"] == ["ar", "bidirectional"]


def test_cli_model_flag(tmp_path):
    from pipeline.tools import demo

    out = tmp_path / "ar_rl.mp4"
    assert demo.main(["--tiny", "--model", "ar_rl", "--pose", "w-3", "--steps", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert demo.main(["--tiny", "--model", "ar", "--mode", "ar", "--out", str(tmp_path / "x.mp4")]) != 0
