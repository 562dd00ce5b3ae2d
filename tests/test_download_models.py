"""download_models.py: --help, fetch (copy from caches / download), --check, bundle."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHubServer
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import download_models
from pipeline.model_files.resolve import COMPONENTS_DIRNAME, WORLDPLAY_DIRNAME, check_model_dir, resolve_models

REPO_ROOT = Path(__file__).resolve().parents[1]
COMP_REPO = "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"
WP_REPO = "tencent/HY-WorldPlay"
AR_REL = "ar_distilled_action_model/model.safetensors"
BI_REL = "bidirectional_model/diffusion_pytorch_model.safetensors"


def _st(path: Path, n: int = 8, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.randn(n, generator=torch.Generator().manual_seed(seed))}, str(path))


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_components(folder: Path) -> Path:
    _json(folder / "model_index.json", {
        "_class_name": "HunyuanVideo15ImageToVideoPipeline",
        "text_encoder": ["transformers", "Qwen2_5_VLTextModel"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo15"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "HunyuanVideo15Transformer3DModel"],
    })
    _json(folder / "text_encoder" / "config.json", {})
    _st(folder / "text_encoder" / "model.safetensors", seed=1)
    _json(folder / "tokenizer" / "tokenizer_config.json", {})
    _json(folder / "vae" / "config.json", {})
    _st(folder / "vae" / "diffusion_pytorch_model.safetensors", seed=2)
    _json(folder / "scheduler" / "scheduler_config.json", {})
    return folder


def write_layout(root: Path, modes=("ar", "bidirectional")) -> Path:
    write_components(root / COMPONENTS_DIRNAME)
    for mode, rel in (("ar", AR_REL), ("bidirectional", BI_REL)):
        if mode in modes:
            _st(root / WORLDPLAY_DIRNAME / rel, n=32, seed=3)
            _json((root / WORLDPLAY_DIRNAME / rel).parent / "config.json", {"mode": mode})
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def add_cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "e" * 40) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("WORLDPLAY_") or name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNPOD_HF_CACHE", str(tmp_path / "runpod"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("WORLDPLAY_RETRY_WAIT", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def minihub(tmp_path, monkeypatch) -> FakeHubServer:
    """The real huggingface_hub client against a fake Hub on 127.0.0.1."""
    comp = files_of(write_components(tmp_path / "remote-c"))
    comp["transformer/diffusion_pytorch_model.safetensors"] = b"never"
    wp_root = tmp_path / "remote-w"
    write_layout(wp_root)
    wp = files_of(wp_root / WORLDPLAY_DIRNAME)
    wp["ar_model/diffusion_pytorch_model.safetensors"] = b"never"
    hub = FakeHubServer({COMP_REPO: comp, WP_REPO: wp}).install(monkeypatch)
    yield hub
    hub.close()


# ---------------------------------------------------------------------------------------------


def test_help_documents_actions_modes_and_env():
    out = subprocess.run([sys.executable, "download_models.py", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("--mode", "{ar,bidirectional,all}", "--dest", "--check", "bundle", "--no-download",
                   "HF_TOKEN", "WORLDPLAY_MODEL_DIR", "RUNPOD_HF_CACHE", "HF_HUB_CACHE",
                   "WORLDPLAY_BUNDLE_REPO", "WORLDPLAY_REPO", "WORLDPLAY_COMPONENTS_REPO",
                   "WORLDPLAY_DOWNLOAD_ATTEMPTS", "WORLDPLAY_RETRY_WAIT", AR_REL, BI_REL):
        assert needle in text, needle


def test_check_good_folder(tmp_path, capsys, no_network):
    root = write_layout(tmp_path / "m")
    assert download_models.main(["--check", "--mode", "all", "--dest", str(root)]) == 0
    assert "complete" in capsys.readouterr().out
    assert download_models.main(["check", "--mode", "ar", "--dest", str(root)]) == 0
    assert no_network == []


def test_check_broken_folder_lists_every_problem(tmp_path, capsys, no_network):
    root = write_layout(tmp_path / "m", modes=("ar",))
    ckpt = root / WORLDPLAY_DIRNAME / AR_REL
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    (root / COMPONENTS_DIRNAME / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert download_models.main(["--check", "--mode", "all", "--dest", str(root)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert f"{ckpt}: truncated" in err
    assert "vae: no weights" in err
    assert f"{root / WORLDPLAY_DIRNAME / BI_REL}: missing" in err
    assert no_network == []


def test_check_uses_worldplay_model_dir_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(write_layout(tmp_path / "m", modes=("ar",))))
    assert download_models.main(["--check"]) == 0


def test_missing_dest_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        download_models.main(["--mode", "ar"])
    assert exc.value.code == 2 and "--dest" in capsys.readouterr().err


def test_fetch_copies_from_local_caches_without_network(tmp_path, capsys, no_network):
    comp = add_cache_repo(tmp_path / "hf", COMP_REPO, files_of(write_components(tmp_path / "c")))
    add_cache_repo(tmp_path / "runpod", WP_REPO, files_of(write_layout(tmp_path / "w") / WORLDPLAY_DIRNAME))
    dest = tmp_path / "dest"
    assert download_models.main(["--mode", "ar", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "copied from hf-cache" in out and "copied from runpod-cache" in out
    assert "total size:" in out
    assert check_model_dir(dest, "ar_distilled") == []
    assert not (dest / WORLDPLAY_DIRNAME / BI_REL).exists()  # mode filter
    assert not any(p.is_symlink() for p in dest.rglob("*"))  # real files, not links into a cache
    assert (dest / COMPONENTS_DIRNAME / "model_index.json").read_bytes() == (comp / "model_index.json").read_bytes()
    # a second run finds everything in place
    assert download_models.main(["--mode", "ar", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.count("already present") == 2


def test_fetch_downloads_only_needed_files(tmp_path, capsys, minihub):
    dest = tmp_path / "dest"
    assert download_models.main(["--mode", "bidirectional", "--dest", str(dest), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"downloaded from https://huggingface.co/{WP_REPO}" in out
    assert f"{WP_REPO}:{BI_REL}" in minihub.gets()
    assert not any("transformer/" in d or "ar_" in d for d in minihub.gets())
    assert not list((tmp_path / "hf").glob("models--*"))  # straight into --dest, not via the HF cache
    assert check_model_dir(dest, "bidirectional") == []
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert f"({size} bytes)" in out


def test_fetch_without_download_fails_cleanly(tmp_path, capsys, no_network):
    assert download_models.main(["--mode", "ar", "--dest", str(tmp_path / "d"), "--no-download"]) == 1
    assert "error [MODEL_NOT_FOUND]" in capsys.readouterr().err


def test_no_download_on_a_truncated_file_names_dest_and_the_file(tmp_path, capsys, monkeypatch, no_network):
    root = write_layout(tmp_path / "d", modes=("ar",))
    ckpt = root / WORLDPLAY_DIRNAME / AR_REL
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    assert download_models.main(["--mode", "ar", "--dest", str(root), "--no-download"]) == 1
    err = capsys.readouterr().err
    assert f"error [MODEL_NOT_FOUND]: --dest {root}: ar_distilled missing or incomplete in {root}: {ckpt}: truncated" in err
    assert "run without --no-download" in err
    assert "WORLDPLAY_MODEL_DIR" not in err  # unset, and not what the user typed
    # without --dest, the folder is named the way the user gave it
    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(root))
    assert download_models.main(["--mode", "ar", "--no-download"]) == 1
    assert f"error [MODEL_NOT_FOUND]: WORLDPLAY_MODEL_DIR={root}: ar_distilled missing or incomplete in {root}: {ckpt}: truncated" in capsys.readouterr().err
    assert no_network == []


def test_bundle_is_a_usable_runpod_cached_model(tmp_path, capsys, minihub, monkeypatch):
    dest = tmp_path / "bundle"
    assert download_models.main(["bundle", "--dest", str(dest), "--repo-id", "me/wp-bundle"]) == 0
    out = capsys.readouterr().out
    assert "hf upload me/wp-bundle" in out and "--exclude" in out
    assert "WORLDPLAY_BUNDLE_REPO=me/wp-bundle" in out
    assert check_model_dir(dest, ("ar_distilled", "bidirectional")) == []  # bundle defaults to both older modes
    manifest = json.loads((dest / download_models.BUNDLE_MANIFEST).read_text())
    assert manifest["modes"] == ["ar", "bidirectional"] and manifest["models"] == ["ar_distilled", "bidirectional"]
    listed = {f["path"] for f in manifest["files"]}
    assert f"{WORLDPLAY_DIRNAME}/{AR_REL}" in listed and f"{WORLDPLAY_DIRNAME}/{BI_REL}" in listed
    assert not any("/transformer/" in p or ".cache" in p for p in listed)
    assert "Community License" in (dest / "README.md").read_text()
    # push it "as one repo": what RunPod mounts is that tree in HF-cache layout
    uploaded = {k: v for k, v in files_of(dest).items() if ".cache" not in k}
    add_cache_repo(tmp_path / "runpod", "me/wp-bundle", uploaded)
    paths = resolve_models(("ar_distilled", "bidirectional"), allow_download=False, set_offline=False)
    assert set(paths.sources.values()) == {"runpod-cache"}
    assert "models--me--wp-bundle" in str(paths.components)


def test_check_and_action_conflict_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        download_models.main(["bundle", "--check", "--dest", str(tmp_path)])


def test_check_accepts_the_projects_tiny_fixture(tiny_models, capsys):
    """The offline completeness rules agree with the layout pipeline.tools.tiny writes."""
    assert download_models.main(["--check", "--mode", "all", "--dest", str(tiny_models)]) == 0


# ---- models by name, and the super-resolution stage --------------------------------------------------------------
SR_REPO = "tencent/HunyuanVideo-1.5"
SR_TRANSFORMER = "transformer/720p_sr_distilled/diffusion_pytorch_model.safetensors"
SR_UPSAMPLER = "upsampler/720p_sr_distilled/diffusion_pytorch_model.safetensors"


@pytest.fixture
def fullhub(tmp_path, monkeypatch) -> FakeHubServer:
    """A fake Hub with every published checkpoint and the HunyuanVideo-1.5 repo (SR stage and much else)."""
    comp = files_of(write_components(tmp_path / "remote-c"))
    wp = files_of(write_layout(tmp_path / "remote-w") / WORLDPLAY_DIRNAME)
    for folder in ("ar_model", "ar_rl_model"):
        _st(tmp_path / "st" / folder / "w.safetensors", n=24, seed=len(folder))
        wp[f"{folder}/diffusion_pytorch_model.safetensors"] = (tmp_path / "st" / folder / "w.safetensors").read_bytes()
        wp[f"{folder}/config.json"] = b"{}"
    hv = {}
    for i, rel in enumerate((SR_TRANSFORMER, SR_UPSAMPLER, "transformer/480p_i2v/diffusion_pytorch_model.safetensors")):
        _st(tmp_path / "st" / f"hv{i}.safetensors", n=16, seed=10 + i)
        hv[rel] = (tmp_path / "st" / f"hv{i}.safetensors").read_bytes()
        hv[rel.rpartition("/")[0] + "/config.json"] = b"{}"
    hv["vae/diffusion_pytorch_model.safetensors"] = b"never"
    hub = FakeHubServer({COMP_REPO: comp, WP_REPO: wp, SR_REPO: hv}).install(monkeypatch)
    yield hub
    hub.close()


def test_fetch_by_model_name_takes_only_that_checkpoint(tmp_path, capsys, fullhub):
    dest = tmp_path / "dest"
    assert download_models.main(["--model", "ar_rl", "--dest", str(dest), "--no-progress"]) == 0
    gets = fullhub.gets()
    assert f"{WP_REPO}:ar_rl_model/diffusion_pytorch_model.safetensors" in gets
    assert not any("ar_model/" in g or "ar_distilled" in g or "bidirectional" in g or SR_REPO in g for g in gets)
    assert check_model_dir(dest, "ar_rl") == []
    assert download_models.main(["check", "--model", "ar_rl,ar", "--dest", str(dest)]) == 1
    assert "ar_model/diffusion_pytorch_model.safetensors: missing" in capsys.readouterr().err


def test_sr_flag_fetches_the_sr_stage_only(tmp_path, capsys, fullhub):
    dest = tmp_path / "dest"
    assert download_models.main(["--model", "ar_distilled", "--sr", "--dest", str(dest), "--no-progress"]) == 0
    gets = [g for g in fullhub.gets() if g.startswith(SR_REPO + ":")]
    assert set(gets) == {f"{SR_REPO}:{f}" for rel in (SR_TRANSFORMER, SR_UPSAMPLER)
                         for f in (rel, rel.rpartition("/")[0] + "/config.json")}  # nothing else of that repo
    assert check_model_dir(dest, "ar_distilled", sr=True) == []
    assert (dest / "HunyuanVideo-1.5" / SR_UPSAMPLER).is_file()
    assert not (dest / "HunyuanVideo-1.5" / "vae").exists()
    assert download_models.main(["check", "--model", "ar_distilled", "--sr", "--dest", str(dest)]) == 0


def test_model_and_mode_together_are_bad_usage(tmp_path):
    with pytest.raises(SystemExit) as exc:
        download_models.main(["--model", "ar", "--mode", "ar", "--dest", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        download_models.main(["--model", "ar_turbo", "--dest", str(tmp_path)])
