"""What a newcomer reads first: the README's set-up notes, and the docs it points to (docs/LOCAL.md's
set-up details and local-S3 command, docs/DEPLOY.md's curl and docker examples), and the licence
files — each checked against the code it describes."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port

import schemas
from docs_files import DEPLOY_DOC, LOCAL_DOC, read

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
LOCAL = read(LOCAL_DOC)
DEPLOY = read(DEPLOY_DOC)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def joined_lines(block: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


# ---- set-up notes ----------------------------------------------------------------------------
def test_cpu_only_torch_is_explained_and_supported_by_ci_run():
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash .ci/run" in LOCAL
    assert "several GB" in README and "CUDA" in README and "several GB" in LOCAL
    ci = (REPO / ".ci" / "run").read_text()
    assert '--index-url "$TORCH_INDEX"' in ci and "TORCH_INDEX_URL" in ci


def test_tiny_demo_noise_is_explained():
    assert "80×48" in README and "random weights" in README and "noise" in README


# ---- a local S3 in one command ---------------------------------------------------------------
def test_requirements_dev_has_the_s3_server():
    assert re.search(r"^moto\[server\]==", (REPO / "requirements-dev.txt").read_text(), flags=re.M)


def test_local_s3_command_serves_a_bucket_the_worker_accepts(tmp_path):
    """`python local_s3.py` (the README's one command) starts an S3 with the bucket and prints the
    MINIO_* exports the README shows; the worker's storage check accepts them."""
    import local_s3
    from worker.delivery import BucketCheck
    from worker.storage import Storage

    # the README's export line is exactly what the command prints for its defaults
    default_line = "export " + " ".join(f"{k}={v}" for k, v in
                                        local_s3.settings("127.0.0.1", 9000, "videos").items())
    assert default_line in LOCAL and "python local_s3.py" in LOCAL

    port = free_port()
    proc = subprocess.Popen([sys.executable, "local_s3.py", "--port", str(port), "--bucket", "readme"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        export = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                export = line.strip()
                break
        assert export, proc.stderr.read() if proc.poll() is not None else "no export line"
        env = dict(item.split("=", 1) for item in shlex.split(export)[1:])
        assert env["MINIO_ENDPOINT"] == f"http://127.0.0.1:{port}" and env["MINIO_BUCKET"] == "readme"
        storage = Storage.from_env(env)
        BucketCheck().ensure(storage)  # the worker's preflight: reachable, bucket exists
        storage.put_bytes("hello.txt", b"hi")
        assert storage.get_bytes("hello.txt", 10) == b"hi"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0


# ---- a deployed endpoint: curl with the Authorization header ---------------------------------
def test_curl_example_for_run_and_status():
    lines = [line for block in bash_blocks(DEPLOY) for line in joined_lines(block)
             if line.startswith("curl") and "api.runpod.ai" in line]
    run = [line for line in lines if re.search(r"/v2/\$ENDPOINT/run\"", line)]
    status = [line for line in lines if "/status/" in line]
    assert run and status, lines
    for line in run + status:
        assert '-H "Authorization: Bearer $RUNPOD_API_KEY"' in line
    # the body it sends is a valid job per the worker's schema
    body = re.search(r"-d '(\{.*\})'", run[0]).group(1)
    payload = json.loads(body)
    assert set(payload) == {"input"}
    assert isinstance(schemas.parse_input(payload["input"]), schemas.JobInput)


def test_init_timeout_is_concrete_in_the_deploy_checklist():
    assert "RUNPOD_INIT_TIMEOUT=1800" in DEPLOY and "40 GB" in DEPLOY
    assert "docs/DEPLOY.md" in README


# ---- docker run -------------------------------------------------------------------------------
def test_docker_run_example_matches_the_image():
    lines = [line for block in bash_blocks(DEPLOY) for line in joined_lines(block)
             if line.startswith("docker run")]
    assert lines, "no docker run example"
    line = lines[0]
    assert "--gpus all" in line and "-p 8000:8000" in line and "worldplay-worker" in line
    assert "docker build -t worldplay-worker ." in DEPLOY
    # the settings it passes are ones the entrypoint reads, and the volume is where the image's
    # Hugging Face cache lives
    entrypoint = (REPO / "entrypoint.sh").read_text()
    for name in re.findall(r"-e (\w+)=", line):
        assert name in entrypoint, name
    assert re.search(r'WORLDPLAY_LOCAL_SERVE:-0}" == "1"', entrypoint)
    volume = re.search(r"-v \S+:(/\S+)", line).group(1)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"HF_HUB_CACHE={re.escape(volume)}/", dockerfile)


# ---- licence ------------------------------------------------------------------------------------
def test_licence_file_for_the_code_and_the_model_licence_kept_separate():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert "Tencent HY-WorldPlay Community License" in text  # not covered by the MIT licence
    assert "[LICENSE](LICENSE)" in README and "MIT" in README
    assert "Tencent HY-WorldPlay Community License" in README and "accept" in README


def test_local_s3_help_runs():
    proc = subprocess.run([sys.executable, "local_s3.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--bucket" in proc.stdout
