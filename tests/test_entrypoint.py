"""entrypoint.sh under bash with a fake environment (fake nvidia-smi, fake python)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO_ROOT / "entrypoint.sh"
BASH = shutil.which("bash") or "/bin/bash"
SECRETS = {"MINIO_ACCESS_KEY": "AKIA-very-private-access", "MINIO_SECRET_KEY": "s3cr3t-value-never-printed"}

FAKE_PYTHON = """#!/bin/sh
echo "ARGS:$*"
for v in HF_HUB_OFFLINE WORLDPLAY_AUTO_OFFLINE PYTORCH_CUDA_ALLOC_CONF WORLDPLAY_ALLOW_DOWNLOAD \
         HF_XET_HIGH_PERFORMANCE PYTHONUNBUFFERED WORLDPLAY_FAST_DECODER; do
  eval "val=\\${$v-<unset>}"
  echo "$v=$val"
done
echo "CWD=$(pwd)"
exit "${FAKE_EXIT:-0}"
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def env(tmp_path):
    """A minimal environment: PATH holds only the tools the script needs plus the fakes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        os.symlink(shutil.which(tool), bin_dir / tool)
    _script(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
    python = _script(tmp_path / "fake-python", FAKE_PYTHON)
    return {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "WORLDPLAY_PYTHON": str(python),
        "RUNPOD_HF_CACHE": str(tmp_path / "no-runpod-cache"),
        "MINIO_ENDPOINT": "http://minio:9000",
        "MINIO_BUCKET": "videos",
        **SECRETS,
    }


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


def parsed(out: str) -> dict[str, str]:
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition("=") if not line.startswith("ARGS:") else ("ARGS", "", line[5:])
        values[key] = value
    return values


def test_script_is_strict_bash():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert subprocess.run([BASH, "-n", str(ENTRYPOINT)]).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK)


def test_runs_handler_with_defaults(env):
    res = run(env, "--rp_log_level", "INFO")
    assert res.returncode == 0, res.stderr
    v = parsed(res.stdout)
    assert v["ARGS"] == "-u handler.py --rp_log_level INFO"
    assert v["CWD"] == str(REPO_ROOT)
    assert v["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert v["WORLDPLAY_ALLOW_DOWNLOAD"] == "1"
    assert v["PYTHONUNBUFFERED"] == "1"
    # no local weights: stay online so missing files can be fetched
    assert v["HF_HUB_OFFLINE"] == "<unset>" and v["HF_XET_HIGH_PERFORMANCE"] == "1"
    assert "GPU 0: NVIDIA H100" in res.stderr
    for secret in SECRETS.values():
        assert secret not in res.stdout + res.stderr


def test_user_settings_are_kept(env):
    env.update(PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:512", WORLDPLAY_ALLOW_DOWNLOAD="0")
    v = parsed(run(env).stdout)
    assert v["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512" and v["WORLDPLAY_ALLOW_DOWNLOAD"] == "0"


def test_exit_status_of_handler_propagates(env):
    env["FAKE_EXIT"] = "7"
    assert run(env).returncode == 7


def test_fails_fast_without_nvidia_smi(env, tmp_path):
    (tmp_path / "bin" / "nvidia-smi").unlink()
    res = run(env)
    assert res.returncode != 0
    assert "no GPU visible" in res.stderr and "nvidia-smi not found" in res.stderr
    assert "ARGS:" not in res.stdout  # the handler never started


def test_fails_fast_when_nvidia_smi_fails(env, tmp_path):
    _script(tmp_path / "bin" / "nvidia-smi", "#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices' >&2\nexit 9\n")
    res = run(env)
    assert res.returncode != 0
    assert "no GPU visible" in res.stderr and "NVIDIA-SMI has failed" in res.stderr
    assert "ARGS:" not in res.stdout


def test_fails_fast_when_sequence_parallel_exceeds_the_gpus(env, tmp_path):
    _script(tmp_path / "bin" / "nvidia-smi",
            "#!/bin/sh\necho 'GPU 0: NVIDIA L40S (UUID: GPU-1)'\necho 'GPU 1: NVIDIA L40S (UUID: GPU-2)'\n")
    env["WORLDPLAY_SEQUENCE_PARALLEL"] = "4"
    res = run(env)
    assert res.returncode != 0 and "ARGS:" not in res.stdout
    assert "WORLDPLAY_SEQUENCE_PARALLEL=4 but 2 GPU(s) are visible" in res.stderr
    env["WORLDPLAY_SEQUENCE_PARALLEL"] = "2"
    assert run(env).returncode == 0


def test_allow_cpu_skips_gpu_check(env, tmp_path):
    (tmp_path / "bin" / "nvidia-smi").unlink()
    env["WORLDPLAY_ALLOW_CPU"] = "1"
    res = run(env)
    assert res.returncode == 0, res.stderr
    assert "skipping the GPU check" in res.stderr


@pytest.mark.parametrize("missing", [["MINIO_SECRET_KEY"], ["MINIO_ENDPOINT", "MINIO_BUCKET"], ["MINIO_ACCESS_KEY"]])
def test_missing_storage_env_still_starts_the_worker(env, missing):
    """A crash-looping worker leaves jobs IN_QUEUE with no error: start anyway, let health and
    each job say what is missing (STORAGE_NOT_CONFIGURED), never print the secrets."""
    for name in missing:
        env.pop(name)
    res = run(env)
    assert res.returncode == 0, res.stderr
    assert parsed(res.stdout)["ARGS"] == "-u handler.py"  # the handler started
    assert "missing storage variable(s): " + " ".join(missing) in res.stderr
    assert "STORAGE_NOT_CONFIGURED" in res.stderr
    for secret in SECRETS.values():
        assert secret not in res.stdout + res.stderr


def test_empty_env_value_counts_as_missing(env):
    env["MINIO_BUCKET"] = ""
    res = run(env)
    assert res.returncode == 0 and "missing storage variable(s): MINIO_BUCKET" in res.stderr


def test_no_storage_at_all_starts_in_inline_mode(env):
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET"):
        env.pop(name)
    res = run(env)
    assert res.returncode == 0, res.stderr
    assert parsed(res.stdout)["ARGS"] == "-u handler.py"
    assert "no-storage mode" in res.stderr and "video_base64" in res.stderr


def test_full_storage_settings_are_announced_without_values(env):
    res = run(env)
    assert "storage: all MINIO_* set" in res.stderr
    assert "minio:9000" not in res.stderr  # the endpoint may carry more than a host: not logged


def test_offline_when_model_dir_has_weights(env, tmp_path):
    model_dir = tmp_path / "models"
    (model_dir / "HunyuanVideo-1.5-480p_i2v").mkdir(parents=True)
    (model_dir / "HunyuanVideo-1.5-480p_i2v" / "model_index.json").write_text("{}")
    (model_dir / "HY-WorldPlay").mkdir()
    env["WORLDPLAY_MODEL_DIR"] = str(model_dir)
    res = run(env)
    v = parsed(res.stdout)
    assert v["HF_HUB_OFFLINE"] == "1" and v["WORLDPLAY_AUTO_OFFLINE"] == "1"
    assert "weights found in WORLDPLAY_MODEL_DIR" in res.stderr


def test_offline_when_runpod_cache_has_a_model(env, tmp_path):
    snap = tmp_path / "rp" / "models--me--bundle" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    env["RUNPOD_HF_CACHE"] = str(tmp_path / "rp")
    v = parsed(run(env).stdout)
    assert v["HF_HUB_OFFLINE"] == "1" and v["WORLDPLAY_AUTO_OFFLINE"] == "1"


def test_empty_model_dir_stays_online(env, tmp_path):
    (tmp_path / "models").mkdir()
    env["WORLDPLAY_MODEL_DIR"] = str(tmp_path / "models")
    (tmp_path / "rp").mkdir()
    env["RUNPOD_HF_CACHE"] = str(tmp_path / "rp")
    assert parsed(run(env).stdout)["HF_HUB_OFFLINE"] == "<unset>"


def test_explicit_offline_setting_is_respected(env, tmp_path):
    snap = tmp_path / "rp" / "models--me--bundle" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    env.update(RUNPOD_HF_CACHE=str(tmp_path / "rp"), HF_HUB_OFFLINE="0")
    v = parsed(run(env).stdout)
    assert v["HF_HUB_OFFLINE"] == "0" and v["WORLDPLAY_AUTO_OFFLINE"] == "<unset>"


def test_local_serve_flags(env):
    env["WORLDPLAY_LOCAL_SERVE"] = "1"
    assert parsed(run(env).stdout)["ARGS"] == "-u handler.py --rp_serve_api --rp_api_host 0.0.0.0"
    env["WORLDPLAY_LOCAL_PORT"] = "8123"
    assert parsed(run(env, "--rp_log_level", "DEBUG").stdout)["ARGS"] == (
        "-u handler.py --rp_serve_api --rp_api_host 0.0.0.0 --rp_api_port 8123 --rp_log_level DEBUG"
    )


def test_serve_live_runs_the_live_server(env):
    env["WORLDPLAY_SERVE"] = "live"
    env["PORT"] = "8080"
    res = run(env, "--health-port", "8081")
    assert res.returncode == 0, res.stderr
    assert parsed(res.stdout)["ARGS"] == "-u -m worker.live --health-port 8081"
    assert "live-world server on port 8080" in res.stderr
    assert parsed(res.stdout)["WORLDPLAY_FAST_DECODER"] == "taehv1_5"  # live worlds stream with it
    env["WORLDPLAY_FAST_DECODER"] = "0"  # the deployer's choice stands
    assert parsed(run(env).stdout)["WORLDPLAY_FAST_DECODER"] == "0"


def test_serve_queue_is_the_default_and_unknown_values_fail(env):
    env["WORLDPLAY_SERVE"] = "queue"
    out = parsed(run(env).stdout)
    assert out["ARGS"] == "-u handler.py" and out["WORLDPLAY_FAST_DECODER"] == "<unset>"  # jobs: opt-in
    env["WORLDPLAY_SERVE"] = "websocket"
    res = run(env)
    assert res.returncode != 0 and "WORLDPLAY_SERVE=websocket is not queue or live" in res.stderr
