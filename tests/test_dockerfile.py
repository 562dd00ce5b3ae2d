"""Dockerfile, .dockerignore and .runpod/*.json: consistent with the repo, no secrets baked in."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"

#: Everything the image needs from the repo. Some are written by other parts of the project;
#: this test fails until each of them exists (on purpose: the image would not build).
EXPECTED_COPY_SOURCES = {
    "requirements.txt",
    "requirements-gpu.txt",
    "handler.py",
    "download_models.py",
    "smoke_test.py",
    "test_input.json",
    "entrypoint.sh",
    "pipeline/",
    "schemas/",
    "worker/",
    "viewer/",
}
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def copy_sources() -> list[str]:
    sources = []
    for word, rest in instructions():
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def env_and_arg_defaults() -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ARG":
            name, _, default = rest.partition("=")
            values[name.strip()] = default.strip()
        elif word == "ENV":
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)", rest):
                values[m.group(1)] = m.group(2).strip('"')
    return values


def requirement_version(name: str) -> str:
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==([^\s#;]+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_copy_sources_are_the_expected_set():
    assert set(copy_sources()) == EXPECTED_COPY_SOURCES


@pytest.mark.parametrize("source", sorted(EXPECTED_COPY_SOURCES))
def test_copy_source_exists_in_repo(source):
    path = REPO_ROOT / source.rstrip("/")
    if source.endswith("/"):
        assert path.is_dir(), f"Dockerfile copies {source} but the folder is missing"
        code = "*.html" if source == "viewer/" else "*.py"  # viewer/: the pages GET / serves
        assert any(path.glob(code)), f"{source} holds no {code} files"
    else:
        assert path.is_file(), f"Dockerfile copies {source} but the file is missing"


def test_dockerignore_does_not_exclude_copied_sources():
    patterns = [
        p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for source in EXPECTED_COPY_SOURCES:
        name = source.rstrip("/")
        hit = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(name, p.lstrip("/"))]
        assert not hit, f".dockerignore pattern {hit} would drop {source} from the build context"
    for must in (".git", "*.safetensors", ".env"):
        assert must in patterns


def test_torch_pin_matches_requirements_and_uses_cu128():
    torch_version = requirement_version("torch")
    installs = [rest for word, rest in instructions() if word == "RUN" and "torch==" in rest]
    assert installs, "the Dockerfile must install torch explicitly"
    for rest in installs:
        assert f"torch=={torch_version}" in rest.split() or f"torch=={torch_version}" in rest
        assert re.findall(r"torch==([^\s\"']+)", rest) == [torch_version]
        assert "--index-url https://download.pytorch.org/whl/cu128" in rest
    assert any("-r" in rest and "requirements.txt" in rest for word, rest in instructions() if word == "RUN")


def test_cuda_runtime_base_image():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) == 1 and re.match(r"nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu\d\d\.04$", froms[0])


def test_no_secret_in_env_or_arg_defaults():
    values = env_and_arg_defaults()
    for name, value in values.items():
        if SECRET_NAME.search(name):
            assert value == "", f"{name} has a default value baked into the image"
    assert "HF_TOKEN" not in values
    text = DOCKERFILE.read_text()
    assert re.search(r"RUN --mount=type=secret,id=hf_token", text)
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text)


def test_runtime_environment():
    values = env_and_arg_defaults()
    assert values["HF_HUB_CACHE"] == "/runpod-volume/huggingface-cache/hub"
    assert values["PYTHONUNBUFFERED"] == "1"
    assert values["WORLDPLAY_MODEL_DIR"] == "/models"
    assert values["BAKE_MODE"] == "none"
    entry = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    assert entry and "entrypoint.sh" in entry[-1]


def test_bake_step_uses_download_models_and_checks_result():
    bake = [rest for word, rest in instructions() if word == "RUN" and "BAKE_MODE" in rest]
    assert len(bake) == 1
    step = bake[0]
    assert "set -eu" in step  # a failed download must fail the build
    assert 'download_models.py --mode "$BAKE_MODE" --dest /models' in step
    assert 'download_models.py --check --mode "$BAKE_MODE" --dest /models' in step
    assert "/run/secrets/hf_token" in step


def test_runpod_hub_json():
    hub = json.loads((REPO_ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["title"] and hub["description"]
    cfg = hub["config"]
    assert cfg["gpuCount"] == 1 and cfg["containerDiskInGb"] >= 80
    assert set(cfg["gpuIds"].split(",")) <= {"AMPERE_80", "ADA_80_PRO", "HOPPER_141"}
    assert "12.8" in cfg["allowedCudaVersions"]
    keys = {e["key"]: e for e in cfg["env"]}
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET", "HF_TOKEN"):
        assert name in keys
    for name, entry in keys.items():
        if SECRET_NAME.search(name):
            assert entry["input"]["default"] == "", f"{name} must not ship a default"
    presets = {p["name"]: p["defaults"] for p in cfg["presets"]}
    assert sorted(d["WORLDPLAY_MODELS"] for d in presets.values()) == ["ar_distilled", "ar_rl", "bidirectional"]


def test_runpod_tests_json():
    tests = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())
    assert tests["tests"] and all({"name", "input", "timeout"} <= set(t) for t in tests["tests"])
    assert tests["config"]["gpuCount"] == 1


def test_gpu_requirements_are_pinned_installed_in_the_image_and_kept_out_of_ci():
    """FlashAttention-4 and its CUDA libraries go into the GPU image only, every one pinned."""
    names = set()
    for line in (REPO_ROOT / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{line!r} is not pinned in requirements-gpu.txt"
            names.add(name.lower())
    assert {"flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-cu12"} <= names
    assert any("-r" in rest and "requirements-gpu.txt" in rest for word, rest in instructions() if word == "RUN")
    cpu = {line.partition("==")[0].lower() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()}
    assert not names & cpu - {"einops", "protobuf"}, "GPU-only packages leaked into requirements.txt (CI)"
