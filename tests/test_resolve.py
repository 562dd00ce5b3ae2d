"""pipeline.model_files.resolve: local folder, RunPod cache, HF cache, bundle, download, integrity, retries.

Everything runs on hand-built fake cache trees in tmp_path; downloads go through the real
huggingface_hub client to a fake Hub on 127.0.0.1 (tests/fake_hub.py), so no test leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import torch
from fake_hub import FakeHubServer
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors.torch import save_file

from pipeline.errors import ModelDownloadError, ModelNotFoundError
from pipeline.model_files import hub as resolve_hub
from pipeline.model_files import resolve
from pipeline.model_files.resolve import (
    COMPONENTS_DIRNAME,
    WORLDPLAY_DIRNAME,
    check_components,
    check_model_dir,
    is_transient_error,
    resolve_models,
    safetensors_problem,
    snapshot_dirs,
    verify_safetensors,
)

COMP_REPO = "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"
WP_REPO = "tencent/HY-WorldPlay"
AR_REL = "ar_distilled_action_model/model.safetensors"
BI_REL = "bidirectional_model/diffusion_pytorch_model.safetensors"
SECRET = "hf_SuperSecretTokenValue0123456789"


# ---------------------------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------------------------


def write_st(path: Path, n: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(n, generator=g), "bias": torch.zeros(2)}, str(path))
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_components(folder: Path, seed: int = 0) -> Path:
    """A diffusers components folder in the real layout (tiny weights)."""
    from pipeline.tools.tiny import MODEL_INDEX

    model_index = {**MODEL_INDEX, "_diffusers_version": "0.42.1"}
    write_json(folder / "model_index.json", model_index)
    for i, sub in enumerate(("text_encoder", "text_encoder_2", "image_encoder")):
        write_json(folder / sub / "config.json", {"sub": sub})
        write_st(folder / sub / "model.safetensors", seed=seed + i)
    write_json(folder / "vae" / "config.json", {"sub": "vae"})
    write_st(folder / "vae" / "diffusion_pytorch_model.safetensors", seed=seed + 7)
    write_json(folder / "tokenizer" / "tokenizer_config.json", {})
    write_json(folder / "tokenizer" / "tokenizer.json", {"model": {}})
    write_json(folder / "tokenizer_2" / "tokenizer_config.json", {})
    write_json(folder / "feature_extractor" / "preprocessor_config.json", {})
    write_json(folder / "scheduler" / "scheduler_config.json", {"shift": 5.0})
    write_json(folder / "guider" / "guider_config.json", {"guidance_scale": 6.0})
    return folder


def write_transformer(path: Path, seed: int = 0) -> Path:
    write_st(path, n=16, seed=seed)
    write_json(path.parent / "config.json", {"hidden_size": 8})
    return path


def write_layout(root: Path, modes=("ar_distilled", "bidirectional"), seed: int = 0) -> Path:
    write_components(root / COMPONENTS_DIRNAME, seed)
    if "ar_distilled" in modes:
        write_transformer(root / WORLDPLAY_DIRNAME / AR_REL, seed + 10)
    if "bidirectional" in modes:
        write_transformer(root / WORLDPLAY_DIRNAME / BI_REL, seed + 20)
    return root


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def remote_components(tmp: Path) -> dict[str, bytes]:
    """Files of the components repo on the 'Hub', including what must never be fetched."""
    files = tree_files(write_components(tmp / "stage-components", seed=100))
    files["transformer/config.json"] = b"{}"
    files["transformer/diffusion_pytorch_model.safetensors"] = b"x" * 64  # never fetched
    files["text_encoder/pytorch_model.bin"] = b"duplicate weights"  # duplicate of safetensors
    files["README.md"] = b"# card"
    return files


def remote_worldplay(tmp: Path) -> dict[str, bytes]:
    stage = tmp / "stage-worldplay"
    write_transformer(stage / AR_REL, seed=110)
    write_transformer(stage / BI_REL, seed=120)
    files = tree_files(stage)
    files["ar_model/diffusion_pytorch_model.safetensors"] = b"y" * 64
    files["ar_rl_model/diffusion_pytorch_model.safetensors"] = b"y" * 64
    files["wan_transformer/model.safetensors"] = b"y" * 64
    files["README.md"] = b"# card"
    return files


def add_cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, *,
                   ref: bool = True, mtime: float | None = None) -> Path:
    """Write ``files`` into an HF-cache layout: blobs/<sha256>, snapshots/<commit>/* -> ../../blobs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    if mtime is not None:
        os.utime(snap, (mtime, mtime))
    return snap


def cache_components(cache: Path, commit: str = "a" * 40, seed: int = 0, **kw) -> Path:
    stage = cache.parent / f"stage-{commit[:6]}-{seed}"
    return add_cache_repo(cache, COMP_REPO, tree_files(write_components(stage, seed)), commit, **kw)


def cache_worldplay(cache: Path, commit: str = "b" * 40, modes=("ar_distilled", "bidirectional"), **kw) -> Path:
    stage = cache.parent / f"stage-wp-{commit[:6]}"
    if "ar_distilled" in modes:
        write_transformer(stage / AR_REL, 10)
    if "bidirectional" in modes:
        write_transformer(stage / BI_REL, 20)
    return add_cache_repo(cache, WP_REPO, tree_files(stage), commit, **kw)


def truncate(path: Path, keep: int = 40) -> None:
    real = path.resolve()
    data = real.read_bytes()
    real.write_bytes(data[: len(data) - keep])


# ---------------------------------------------------------------------------------------------
# Fake Hub: the real huggingface_hub client against a server on 127.0.0.1 (tests/fake_hub.py)
# ---------------------------------------------------------------------------------------------


def http_error(status: int, cls=HfHubHTTPError):
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x/resolve/main/f"))
    return cls(f"{status} Client Error", response=response)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHubServer:
    remote = tmp_path / "remote"
    server = FakeHubServer({COMP_REPO: remote_components(remote), WP_REPO: remote_worldplay(remote)}).install(monkeypatch)
    yield server
    server.close()


def api_calls(hub: FakeHubServer) -> list[str]:
    return [path for _, path in hub.requests if path.startswith("/api/")]


# ---------------------------------------------------------------------------------------------
# Environment isolation
# ---------------------------------------------------------------------------------------------

_ENV = [
    "WORLDPLAY_MODEL_DIR", "WORLDPLAY_DOWNLOAD_DIR", "WORLDPLAY_BUNDLE_REPO", "WORLDPLAY_REPO",
    "WORLDPLAY_COMPONENTS_REPO", "WORLDPLAY_REVISION", "WORLDPLAY_COMPONENTS_REVISION",
    "WORLDPLAY_ALLOW_DOWNLOAD", "WORLDPLAY_AUTO_OFFLINE", "WORLDPLAY_DOWNLOAD_ATTEMPTS",
    "WORLDPLAY_RETRY_WAIT", "WORLDPLAY_RETRY_WAIT_MAX", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE",
]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty caches under tmp_path, no token, online, tiny retry waits; restores offline flags."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNPOD_HF_CACHE", str(tmp_path / "runpod" / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("WORLDPLAY_RETRY_WAIT", "0")
    monkeypatch.setenv("WORLDPLAY_RETRY_WAIT_MAX", "0")
    monkeypatch.setenv("WORLDPLAY_DOWNLOAD_ATTEMPTS", "3")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(resolve_hub, "_token_configured", lambda: bool(os.environ.get("HF_TOKEN")))
    saved = {
        name: mod.HF_HUB_OFFLINE
        for name, mod in list(sys.modules.items())
        if mod is not None and name.startswith(("diffusers", "transformers"))
        and isinstance(getattr(mod, "HF_HUB_OFFLINE", None), bool)
    }
    yield
    for name, value in saved.items():
        setattr(sys.modules[name], "HF_HUB_OFFLINE", value)


RUNPOD = lambda tmp: tmp / "runpod" / "hub"  # noqa: E731
HFC = lambda tmp: tmp / "hf" / "hub"  # noqa: E731


# ---------------------------------------------------------------------------------------------
# verify_safetensors / completeness checks
# ---------------------------------------------------------------------------------------------


def test_verify_safetensors_accepts_complete_file(tmp_path):
    path = write_st(tmp_path / "a.safetensors", n=32)
    assert verify_safetensors(path) == path.stat().st_size
    assert safetensors_problem(path) is None


def test_verify_safetensors_reports_truncation_with_sizes(tmp_path):
    path = write_st(tmp_path / "a.safetensors", n=32)
    full = path.stat().st_size
    truncate(path, keep=8)
    with pytest.raises(ModelNotFoundError) as err:
        verify_safetensors(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert str(full - 8) in msg and str(full) in msg


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "truncated"),
        (b"\x05\x00\x00", "truncated"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length claims"),
        ((4).to_bytes(8, "little") + b"nope", "corrupt header"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ],
)
def test_verify_safetensors_rejects_garbage(tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    assert reason in safetensors_problem(path)


def test_verify_safetensors_rejects_appended_bytes_and_missing(tmp_path):
    path = write_st(tmp_path / "a.safetensors")
    with open(path, "ab") as fh:
        fh.write(b"junk")
    assert "oversized" in safetensors_problem(path)
    assert safetensors_problem(tmp_path / "nope.safetensors") == "missing"


def test_verify_reads_only_the_header(tmp_path, monkeypatch):
    path = write_st(tmp_path / "a.safetensors", n=4096)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Spy(real_open(p, mode, *a, **k)))
    assert safetensors_problem(path) is None
    assert reads == [8, header_len]


def test_check_components_finds_missing_pieces(tmp_path):
    comp = write_components(tmp_path / "c")
    assert check_components(comp) == []
    (comp / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (comp / "scheduler" / "scheduler_config.json").unlink()
    problems = "\n".join(check_components(comp))
    assert "vae: no weights" in problems
    assert "scheduler: no configuration file" in problems
    import shutil

    shutil.rmtree(comp / "tokenizer_2")
    assert any("tokenizer_2: folder missing" in p for p in check_components(comp))


def test_check_components_verifies_sharded_index(tmp_path):
    comp = write_components(tmp_path / "c")
    write_json(comp / "text_encoder" / "model.safetensors.index.json",
               {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    write_st(comp / "text_encoder" / "model-00001-of-00002.safetensors")
    problems = check_components(comp)
    assert len(problems) == 1 and "model-00002-of-00002.safetensors: missing" in problems[0]


def test_check_components_needs_model_index(tmp_path):
    comp = write_components(tmp_path / "c")
    (comp / "model_index.json").write_text("{broken")
    assert "unreadable JSON" in check_components(comp)[0]


# ---------------------------------------------------------------------------------------------
# Resolution paths
# ---------------------------------------------------------------------------------------------


def test_local_dir_argument(tmp_path):
    root = write_layout(tmp_path / "models")
    paths = resolve_models(("ar_distilled", "bidirectional"), model_dir=root, allow_download=False)
    assert paths.components == root / COMPONENTS_DIRNAME
    assert paths.transformer == {"ar_distilled": root / WORLDPLAY_DIRNAME / AR_REL, "bidirectional": root / WORLDPLAY_DIRNAME / BI_REL}
    assert paths.sources == {"components": "local", "ar_distilled": "local", "bidirectional": "local"}
    assert set(paths.timings) == {"components", "ar_distilled", "bidirectional", "total"}
    assert paths.models == ("ar_distilled", "bidirectional")


def test_local_dir_from_env_and_only_requested_mode(tmp_path, monkeypatch):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(root))
    paths = resolve_models("ar_distilled")
    assert set(paths.transformer) == {"ar_distilled"} and paths.sources["ar_distilled"] == "local"
    with pytest.raises(ModelNotFoundError, match="bidirectional"):
        resolve_models("bidirectional")


def test_runpod_cache_refs_main(tmp_path):
    comp = cache_components(RUNPOD(tmp_path), commit="1" * 40)
    cache_components(RUNPOD(tmp_path), commit="2" * 40, seed=5, ref=False, mtime=time.time() + 100)
    wp = cache_worldplay(RUNPOD(tmp_path))
    paths = resolve_models("ar_distilled", allow_download=False)
    assert paths.components == comp  # refs/main wins over a newer snapshot
    assert paths.transformer["ar_distilled"] == wp / AR_REL
    assert paths.sources == {"components": "runpod-cache", "ar_distilled": "runpod-cache"}


def test_runpod_cache_without_refs_uses_newest_snapshot(tmp_path):
    now = time.time()
    cache_components(RUNPOD(tmp_path), commit="1" * 40, ref=False, mtime=now - 1000)
    newest = cache_components(RUNPOD(tmp_path), commit="2" * 40, seed=3, ref=False, mtime=now)
    cache_worldplay(RUNPOD(tmp_path), ref=False)
    paths = resolve_models("ar_distilled", allow_download=False)
    assert paths.components == newest


def test_incomplete_refs_main_snapshot_falls_back_to_another(tmp_path):
    good = cache_components(RUNPOD(tmp_path), commit="1" * 40, ref=False, mtime=time.time() - 1000)
    bad = cache_components(RUNPOD(tmp_path), commit="2" * 40, seed=3)  # refs/main
    (bad / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    cache_worldplay(RUNPOD(tmp_path))
    assert resolve_models("ar_distilled", allow_download=False).components == good


def test_snapshot_order(tmp_path):
    repo = tmp_path / "models--o--n"
    for i, name in enumerate(("x" * 40, "y" * 40, "z" * 40)):
        (repo / "snapshots" / name).mkdir(parents=True)
        os.utime(repo / "snapshots" / name, (1000 + i, 1000 + i))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("x" * 40 + "\n")
    assert [p.name[0] for p in snapshot_dirs(repo)] == ["x", "z", "y"]
    assert snapshot_dirs(tmp_path / "absent") == []


@pytest.mark.parametrize("configured", [True, False])
def test_bundle_repo_in_runpod_cache(tmp_path, monkeypatch, configured):
    stage = write_layout(tmp_path / "bundle-stage")
    snap = add_cache_repo(RUNPOD(tmp_path), "me/worldplay-bundle", tree_files(stage), "d" * 40)
    if configured:
        monkeypatch.setenv("WORLDPLAY_BUNDLE_REPO", "me/worldplay-bundle")
    paths = resolve_models(("ar_distilled", "bidirectional"), allow_download=False)
    assert paths.components == snap / COMPONENTS_DIRNAME
    assert paths.transformer["bidirectional"] == snap / WORLDPLAY_DIRNAME / BI_REL
    assert set(paths.sources.values()) == {"runpod-cache"}


def test_bundle_repo_in_hf_cache_when_configured(tmp_path, monkeypatch):
    snap = add_cache_repo(HFC(tmp_path), "me/b", tree_files(write_layout(tmp_path / "s", modes=("ar_distilled",))), "d" * 40)
    monkeypatch.setenv("WORLDPLAY_BUNDLE_REPO", "me/b")
    paths = resolve_models("ar_distilled", allow_download=False)
    assert paths.transformer["ar_distilled"] == snap / WORLDPLAY_DIRNAME / AR_REL
    assert paths.sources == {"components": "hf-cache", "ar_distilled": "hf-cache"}


def test_hf_cache(tmp_path):
    comp = cache_components(HFC(tmp_path))
    wp = cache_worldplay(HFC(tmp_path), modes=("bidirectional",))
    paths = resolve_models("bidirectional", allow_download=False)
    assert paths.components == comp and paths.transformer["bidirectional"] == wp / BI_REL
    assert paths.sources == {"components": "hf-cache", "bidirectional": "hf-cache"}


def test_hf_home_is_used_when_hf_hub_cache_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    cache_components(tmp_path / "home" / "hub")
    cache_worldplay(tmp_path / "home" / "hub")
    assert resolve_models("ar_distilled", allow_download=False).sources["ar_distilled"] == "hf-cache"


def test_precedence_local_then_runpod_then_hf(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    for cache in (RUNPOD(tmp_path), HFC(tmp_path)):
        cache_components(cache)
        cache_worldplay(cache)
    assert set(resolve_models("ar_distilled", model_dir=root).sources.values()) == {"local"}
    assert set(resolve_models("ar_distilled").sources.values()) == {"runpod-cache"}
    # per component: the local folder lacks bidirectional, the RunPod cache supplies it
    paths = resolve_models(("ar_distilled", "bidirectional"), model_dir=root)
    assert paths.sources == {"components": "local", "ar_distilled": "local", "bidirectional": "runpod-cache"}


def test_same_dir_for_runpod_and_hf_cache_is_searched_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(RUNPOD(tmp_path)))
    cache_components(RUNPOD(tmp_path))
    cache_worldplay(RUNPOD(tmp_path))
    assert set(resolve_models("ar_distilled").sources.values()) == {"runpod-cache"}


def test_sources_and_timings_are_logged(tmp_path, caplog):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    with caplog.at_level(logging.INFO, logger="worldplay.resolve"):
        resolve_models("ar_distilled", model_dir=root)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "worldplay.resolve")
    assert f"components: {root / COMPONENTS_DIRNAME} from local folder {root}" in text
    assert "models resolved in" in text and "ar_distilled=local" in text


# ---------------------------------------------------------------------------------------------
# Missing and truncated files without downloads
# ---------------------------------------------------------------------------------------------


def test_nothing_anywhere_and_downloads_off_by_default(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_models("ar_distilled")  # WORLDPLAY_ALLOW_DOWNLOAD unset -> no download
    msg = str(err.value)
    assert "WORLDPLAY_ALLOW_DOWNLOAD=1" in msg and "download_models.py" in msg
    assert str(RUNPOD(tmp_path)) in msg and str(HFC(tmp_path)) in msg


def test_truncated_local_file_reported_not_loaded(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    ckpt = root / WORLDPLAY_DIRNAME / AR_REL
    truncate(ckpt)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_models("ar_distilled", model_dir=root, allow_download=False)
    assert str(ckpt) in str(err.value) and "truncated" in str(err.value)


def test_truncated_local_file_falls_through_to_complete_cache(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    truncate(root / WORLDPLAY_DIRNAME / AR_REL)
    wp = cache_worldplay(HFC(tmp_path))
    paths = resolve_models("ar_distilled", model_dir=root, allow_download=False)
    assert paths.transformer["ar_distilled"] == wp / AR_REL
    assert paths.sources == {"components": "local", "ar_distilled": "hf-cache"}


def test_missing_component_file_is_reported(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    (root / COMPONENTS_DIRNAME / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"text_encoder: no weights"):
        resolve_models("ar_distilled", model_dir=root)


def test_broken_symlink_in_cache_is_reported(tmp_path):
    cache_components(HFC(tmp_path))
    wp = cache_worldplay(HFC(tmp_path))
    (wp / AR_REL).resolve().unlink()  # blob gone, symlink left
    with pytest.raises(ModelNotFoundError, match="broken symlink"):
        resolve_models("ar_distilled")


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def test_download_fetches_only_what_ar_needs(tmp_path, hub):
    paths = resolve_models("ar_distilled", allow_download=True)
    fetched = hub.gets()
    assert f"{WP_REPO}:{AR_REL}" in fetched
    assert f"{WP_REPO}:ar_distilled_action_model/config.json" in fetched
    assert not any("transformer/" in f or "bidirectional" in f or "ar_model/" in f or "ar_rl_model" in f
                   or "wan" in f or "README" in f or f.endswith(".bin") for f in fetched)
    assert f"{COMP_REPO}:model_index.json" in fetched and f"{COMP_REPO}:vae/config.json" in fetched
    resolves = [p.split("/resolve/")[1] for m, p in hub.requests if "/resolve/" in p]
    assert resolves and all(r.startswith(hub.commit + "/") for r in resolves)  # one commit for the whole set
    assert paths.sources == {"components": "download", "ar_distilled": "download"}
    snap = HFC(tmp_path) / ("models--" + COMP_REPO.replace("/", "--")) / "snapshots" / hub.commit
    assert paths.components == snap and check_components(snap) == []
    assert verify_safetensors(paths.transformer["ar_distilled"]) > 0
    # refs/main recorded, so the next cold start resolves from the cache without the Hub
    assert (snap.parent.parent / "refs" / "main").read_text() == hub.commit
    hub.requests.clear()
    again = resolve_models("ar_distilled", allow_download=True)
    assert again.sources == {"components": "hf-cache", "ar_distilled": "hf-cache"}
    assert hub.requests == []


def test_download_bidirectional_does_not_fetch_ar(tmp_path, hub):
    write_components(tmp_path / "models" / COMPONENTS_DIRNAME)
    paths = resolve_models("bidirectional", model_dir=tmp_path / "models", allow_download=True)
    assert sorted(hub.gets()) == [f"{WP_REPO}:bidirectional_model/config.json", f"{WP_REPO}:{BI_REL}"]
    assert paths.sources == {"components": "local", "bidirectional": "download"}


def test_download_into_download_dir_layout(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_DOWNLOAD_DIR", str(tmp_path / "dl"))
    paths = resolve_models("ar_distilled", allow_download=True)
    assert paths.components == tmp_path / "dl" / COMPONENTS_DIRNAME
    assert paths.transformer["ar_distilled"] == tmp_path / "dl" / WORLDPLAY_DIRNAME / AR_REL
    assert check_model_dir(tmp_path / "dl", "ar_distilled") == []
    hub.requests.clear()
    assert set(resolve_models("ar_distilled", allow_download=True).sources.values()) == {"local"}
    assert hub.requests == []


def test_truncated_cache_file_is_refetched(tmp_path, hub):
    cache_components(HFC(tmp_path))
    # the cached WorldPlay snapshot is the Hub's current commit, with a truncated checkpoint
    stage = tmp_path / "wp-stage"
    for rel in (AR_REL, "ar_distilled_action_model/config.json"):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(hub.repos[WP_REPO][rel])
    snap = add_cache_repo(HFC(tmp_path), WP_REPO, tree_files(stage), hub.commit)
    truncate(snap / AR_REL)
    paths = resolve_models("ar_distilled", allow_download=True)
    assert hub.gets() == [f"{WP_REPO}:{AR_REL}"]  # only the bad file
    assert paths.transformer["ar_distilled"] == snap / AR_REL and safetensors_problem(paths.transformer["ar_distilled"]) is None
    assert paths.sources == {"components": "hf-cache", "ar_distilled": "download"}


def test_truncated_file_in_download_dir_is_refetched(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_DOWNLOAD_DIR", str(tmp_path / "dl"))
    resolve_models("ar_distilled", allow_download=True, set_offline=False)
    truncate(tmp_path / "dl" / WORLDPLAY_DIRNAME / AR_REL)
    hub.requests.clear()
    paths = resolve_models("ar_distilled", allow_download=True)
    assert hub.gets() == [f"{WP_REPO}:{AR_REL}"]
    assert paths.sources == {"components": "local", "ar_distilled": "download"}
    assert safetensors_problem(paths.transformer["ar_distilled"]) is None


def test_transient_errors_are_retried_then_succeed(tmp_path, hub, caplog):
    hub.failures["api"] = [502]  # the first Hub API call
    hub.failures[AR_REL] = [503, 503]
    with caplog.at_level(logging.WARNING, logger="worldplay.resolve"):
        paths = resolve_models("ar_distilled", allow_download=True)
    assert hub.gets(WP_REPO).count(f"{WP_REPO}:{AR_REL}") == 3
    assert paths.sources["ar_distilled"] == "download" and safetensors_problem(paths.transformer["ar_distilled"]) is None
    retries = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
    assert len(retries) == 3 and "attempt 1/3" in retries[0]
    assert f"{WP_REPO}/{AR_REL} (attempt 1/3)" in retries[1] and "(attempt 2/3)" in retries[2]


def test_dropped_connection_is_resumed_by_huggingface_hub(tmp_path, hub, caplog):
    hub.failures[AR_REL] = [0]  # the server hangs up mid-request: huggingface_hub resumes it itself
    with caplog.at_level(logging.WARNING, logger="worldplay.resolve"):
        paths = resolve_models("ar_distilled", allow_download=True)
    assert hub.gets(WP_REPO).count(f"{WP_REPO}:{AR_REL}") == 2
    assert safetensors_problem(paths.transformer["ar_distilled"]) is None
    assert not [r for r in caplog.records if "transient error" in r.getMessage()]


def test_transient_errors_exhaust_bounded_attempts(tmp_path, hub):
    hub.failures[AR_REL] = [503] * 10
    with pytest.raises(ModelDownloadError) as err:
        resolve_models("ar_distilled", allow_download=True)
    assert hub.gets(WP_REPO).count(f"{WP_REPO}:{AR_REL}") == 3
    assert "after 3 attempts" in str(err.value) and AR_REL in str(err.value)


def test_backoff_is_exponential_and_capped(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_RETRY_WAIT", "1")
    monkeypatch.setenv("WORLDPLAY_RETRY_WAIT_MAX", "3")
    monkeypatch.setenv("WORLDPLAY_DOWNLOAD_ATTEMPTS", "4")
    sleeps: list[float] = []
    monkeypatch.setattr(resolve_hub, "_sleep", lambda s: sleeps.append(s))
    hub.failures[AR_REL] = [502] * 3
    resolve_models("ar_distilled", allow_download=True)
    assert sleeps == [1.0, 2.0, 3.0]  # 1, 2, then 4 capped at 3


@pytest.mark.parametrize(
    "status, code, expect",
    [
        (401, None, ["401", "HF_TOKEN"]),
        (403, "GatedRepo", ["accept the licence at https://huggingface.co/tencent/HY-WorldPlay", "HF_TOKEN"]),
        (404, "EntryNotFound", ["not found", "WORLDPLAY_REPO"]),
        (404, "RepoNotFound", ["repository not found"]),
    ],
    ids=["401", "403-gated", "404-entry", "404-repo"],
)
def test_permanent_errors_fail_at_once(tmp_path, hub, monkeypatch, status, code, expect):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    write_components(tmp_path / "m" / COMPONENTS_DIRNAME)
    hub.failures[AR_REL] = [status]
    if code:
        hub.error_codes[status] = code
    with pytest.raises(ModelDownloadError) as err:
        resolve_models("ar_distilled", model_dir=tmp_path / "m", allow_download=True)
    msg = str(err.value)
    assert hub.gets(WP_REPO).count(f"{WP_REPO}:{AR_REL}") == 1
    assert WP_REPO in msg and AR_REL in msg
    for fragment in expect:
        assert fragment in msg
    assert SECRET not in msg


def test_gated_repo_listing_fails_at_once_with_licence_hint(tmp_path, hub):
    hub.failures["api"] = [403]
    with pytest.raises(ModelDownloadError, match=r"accept the licence at https://huggingface.co/"):
        resolve_models("ar_distilled", allow_download=True)
    assert len(api_calls(hub)) == 1 and hub.gets() == []


def test_unknown_repo_override(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_REPO", "someone/not-there")
    write_components(tmp_path / "m" / COMPONENTS_DIRNAME)
    with pytest.raises(ModelDownloadError, match="someone/not-there.*repository not found"):
        resolve_models("ar_distilled", model_dir=tmp_path / "m", allow_download=True)
    assert len([r for r in hub.requests if "not-there" in r[1]]) == 1  # a permanent error is not retried


def test_is_transient_error_classification():
    assert is_transient_error(httpx2.ConnectTimeout("t"))
    assert is_transient_error(TimeoutError())
    assert is_transient_error(http_error(429)) and is_transient_error(http_error(500))
    assert not is_transient_error(http_error(401)) and not is_transient_error(http_error(404))
    assert not is_transient_error(ValueError("x"))
    # huggingface_hub wraps a failed HEAD call: look through the chain
    try:
        try:
            raise httpx2.ReadTimeout("slow")
        except httpx2.ReadTimeout as inner:
            raise LocalEntryNotFoundError("cannot find the requested files") from inner
    except LocalEntryNotFoundError as wrapped:
        assert is_transient_error(wrapped)
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert not is_transient_error(OfflineModeIsEnabled("offline"))
    import requests

    assert is_transient_error(requests.exceptions.ConnectionError("reset"))


def test_disk_space_checked_before_downloading(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(resolve.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**6, used=10**6 - 100, free=100))
    with pytest.raises(ModelDownloadError) as err:
        resolve_models("ar_distilled", allow_download=True)
    msg = str(err.value)
    # one check for everything the mode needs: components + the AR checkpoint and its config
    needed = sum(len(v) for k, v in hub.repos[COMP_REPO].items()
                 if k.split("/")[0] not in ("transformer", "README.md") and not k.endswith(".bin"))
    needed += sum(len(hub.repos[WP_REPO][k]) for k in (AR_REL, "ar_distilled_action_model/config.json"))
    assert f"need {needed} bytes" in msg and "100 bytes free" in msg
    assert hub.gets() == []


def test_unwritable_cache_asks_for_download_dir(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(resolve.os, "access", lambda p, mode: False)
    with pytest.raises(ModelDownloadError, match="WORLDPLAY_DOWNLOAD_DIR"):
        resolve_models("ar_distilled", allow_download=True)


# ---------------------------------------------------------------------------------------------
# Offline behaviour
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fail (and record) any attempt to resolve a name or open a connection."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_hub_outage_with_everything_local_makes_no_network_call(tmp_path, monkeypatch, no_network):
    cache_components(RUNPOD(tmp_path))
    cache_worldplay(RUNPOD(tmp_path))
    monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "1")  # downloads allowed, but nothing is missing
    paths = resolve_models(("ar_distilled", "bidirectional"))
    assert set(paths.sources.values()) == {"runpod-cache"}
    assert no_network == []
    # and the Hub is now offline for every later loader: a hub call fails locally, without network
    assert hf_constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    from huggingface_hub import hf_hub_download

    with pytest.raises((LocalEntryNotFoundError, OSError)):
        hf_hub_download(COMP_REPO, "model_index.json", cache_dir=str(tmp_path / "empty"))
    assert no_network == []


def test_set_offline_false_leaves_hub_online(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    resolve_models("ar_distilled", model_dir=root, set_offline=False)
    assert not hf_constants.is_offline_mode()


def test_user_offline_forbids_download(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_models("ar_distilled", allow_download=True)
    assert hub.requests == []


def test_automatic_offline_is_lifted_to_download_then_restored(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("WORLDPLAY_AUTO_OFFLINE", "1")  # set by entrypoint.sh, not by the user
    write_components(tmp_path / "m" / COMPONENTS_DIRNAME)
    paths = resolve_models("ar_distilled", model_dir=tmp_path / "m", allow_download=True)
    assert paths.sources["ar_distilled"] == "download" and hub.offline_seen and not any(hub.offline_seen)
    assert hf_constants.is_offline_mode()


def test_set_hub_offline_switches_huggingface_hub_and_the_environment(monkeypatch):
    # huggingface_hub checks constants.HF_HUB_OFFLINE on every request; libraries imported later read the
    # variable. (Copies diffusers made at import are left alone: the engine loads local folders only.)
    resolve.set_hub_offline(True)
    assert hf_constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    resolve.set_hub_offline(False)
    assert not hf_constants.is_offline_mode() and "HF_HUB_OFFLINE" not in os.environ


def test_corrupt_json_in_download_dir_is_refetched(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_DOWNLOAD_DIR", str(tmp_path / "dl"))
    resolve_models("ar_distilled", allow_download=True, set_offline=False)
    (tmp_path / "dl" / COMPONENTS_DIRNAME / "model_index.json").write_text("{cut")
    hub.requests.clear()
    paths = resolve_models("ar_distilled", allow_download=True)
    assert hub.gets() == [f"{COMP_REPO}:model_index.json"]
    assert paths.sources == {"components": "download", "ar_distilled": "local"} and check_components(paths.components) == []


# ---- every published model by name, and the super-resolution stage ---------------------------------------------
def test_each_model_resolves_only_its_own_checkpoint(tmp_path):
    """ar, ar_rl: their own folders and file names (tencent/HY-WorldPlay); nothing else is looked up."""
    from pipeline.checkpoints import CHECKPOINTS

    root = write_layout(tmp_path / "models", modes=())
    for i, name in enumerate(CHECKPOINTS):
        write_transformer(root / WORLDPLAY_DIRNAME / CHECKPOINTS[name].rel, seed=40 + i)
    for name, checkpoint in CHECKPOINTS.items():
        paths = resolve_models(name, model_dir=root, allow_download=False)
        assert paths.transformer == {name: root / WORLDPLAY_DIRNAME / checkpoint.folder / checkpoint.file}
        assert paths.sr is None and paths.sr_files == {}
    assert resolve.TRANSFORMER_FILES["ar"] == ("ar_model", "diffusion_pytorch_model.safetensors")
    assert resolve.TRANSFORMER_FILES["ar_rl"] == ("ar_rl_model", "diffusion_pytorch_model.safetensors")
    assert resolve.TRANSFORMER_FILES["ar_distilled"] == ("ar_distilled_action_model", "model.safetensors")


def test_unknown_model_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ar_distilled, ar, ar_rl, bidirectional"):
        resolve_models("ar_turbo", model_dir=tmp_path, allow_download=False)


def write_sr(root: Path, seed: int = 0) -> Path:
    for i, rel in enumerate(resolve.SR_FILES.values()):
        write_transformer(root / resolve.SR_DIRNAME / rel, seed + i)
    return root


def test_sr_resolves_only_when_asked_and_names_its_files(tmp_path):
    root = write_layout(tmp_path / "models", modes=("ar_distilled",))
    assert resolve_models("ar_distilled", model_dir=root, allow_download=False).sr is None  # not asked: not looked at
    with pytest.raises(ModelNotFoundError, match="sr: not found.*--sr"):
        resolve_models("ar_distilled", model_dir=root, allow_download=False, sr=True)
    write_sr(root)
    paths = resolve_models("ar_distilled", model_dir=root, allow_download=False, sr=True)
    assert paths.sr == root / "HunyuanVideo-1.5" and paths.sources["sr"] == "local"
    assert paths.sr_files == {
        "transformer": root / "HunyuanVideo-1.5/transformer/720p_sr_distilled/diffusion_pytorch_model.safetensors",
        "upsampler": root / "HunyuanVideo-1.5/upsampler/720p_sr_distilled/diffusion_pytorch_model.safetensors"}
    assert check_model_dir(root, "ar_distilled", sr=True) == []
    (paths.sr_files["upsampler"].parent / "config.json").unlink()
    problems = check_model_dir(root, "ar_distilled", sr=True)
    assert len(problems) == 1 and "upsampler/720p_sr_distilled/config.json: missing" in problems[0]


def test_sr_from_the_official_repo_in_the_runpod_cache(tmp_path):
    cache_components(RUNPOD(tmp_path))
    cache_worldplay(RUNPOD(tmp_path), modes=("ar_distilled",))
    stage = write_sr(tmp_path / "stage-sr") / resolve.SR_DIRNAME
    snap = add_cache_repo(RUNPOD(tmp_path), resolve.SR_REPO, tree_files(stage), "c" * 40)
    paths = resolve_models("ar_distilled", allow_download=False, sr=True)
    assert paths.sr == snap and paths.sources["sr"] == "runpod-cache"
    assert sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()) == sorted(
        [rel for rel in resolve.SR_FILES.values()] + [rel.rpartition("/")[0] + "/config.json"
                                                       for rel in resolve.SR_FILES.values()])
