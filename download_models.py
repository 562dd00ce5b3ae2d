#!/usr/bin/env python3
"""Pre-fetch, verify or bundle the HY-WorldPlay weights the worker needs (and nothing more).

Thin CLI over ``pipeline.model_files.resolve``; run ``python download_models.py --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from pipeline.checkpoints import MODE_ALIASES, MODEL_NAMES, parse_model_list
from pipeline.errors import ModelNotFoundError, PipelineError
from pipeline.model_files.resolve import (
    COMPONENTS_DIRNAME,
    DEFAULT_COMPONENTS_REPO,
    DEFAULT_RUNPOD_CACHE,
    DEFAULT_WORLDPLAY_REPO,
    SR_DIRNAME,
    SR_FILES,
    SR_REPO,
    TRANSFORMER_FILES,
    WORLDPLAY_DIRNAME,
    check_model_dir,
    fmt_bytes,
    Settings,
    prefetch,
    snapshot_dirs,
)
from pipeline.model_files.fast_decoder import (
    DEFAULT_FILE,
    FAST_DECODER_DIRNAME,
    check_published,
    chosen_file,
    prefetch_fast_decoder,
)

BUNDLE_MANIFEST = "worldplay_bundle.json"

EPILOG = f"""\
actions:
  fetch   (default) make DIR a complete folder for --model: keep what is already there, copy
          what a local cache holds, download only the missing files (progress bars shown).
  check   verify DIR without any network access; exit 1 and list every problem.
          `--check` is the same as `check`.
  --fast-decoder  also fetch / check the fast decoder's weights (TAEHV, ~20-40 MB, from the
          GitHub repo madebyollin/taehv at a pinned commit, checked by git blob id): live worlds
          stream with it, jobs use it with "decoder": "fast". Without it the worker serves the
          full VAE only.
  bundle  like fetch with ar_distilled,bidirectional by default, then add a model card and a manifest so
          DIR can be pushed as ONE Hugging Face repo and selected as the endpoint's RunPod
          cached model (one cached model per endpoint); prints the upload command.

layout written to DIR (what WORLDPLAY_MODEL_DIR and bundle repos use):
  DIR/{COMPONENTS_DIRNAME}/model_index.json, text_encoder/, tokenizer/, text_encoder_2/,
      tokenizer_2/, image_encoder/, feature_extractor/, vae/, scheduler/, guider/
      (from {DEFAULT_COMPONENTS_REPO}, never its transformer/)
  DIR/{WORLDPLAY_DIRNAME}/{TRANSFORMER_FILES['ar_distilled'][0]}/{TRANSFORMER_FILES['ar_distilled'][1]}           (--model ar_distilled)
  DIR/{WORLDPLAY_DIRNAME}/{TRANSFORMER_FILES['ar'][0]}/{TRANSFORMER_FILES['ar'][1]}                   (--model ar)
  DIR/{WORLDPLAY_DIRNAME}/{TRANSFORMER_FILES['ar_rl'][0]}/{TRANSFORMER_FILES['ar_rl'][1]}                (--model ar_rl)
  DIR/{WORLDPLAY_DIRNAME}/{TRANSFORMER_FILES['bidirectional'][0]}/{TRANSFORMER_FILES['bidirectional'][1]}        (--model bidirectional)
  DIR/{SR_DIRNAME}/{SR_FILES['transformer']}  (--sr, from {SR_REPO};
  DIR/{SR_DIRNAME}/{SR_FILES['upsampler']}     each with its config.json)
  DIR/{FAST_DECODER_DIRNAME}/taehv1_5.safetensors                     (--fast-decoder; taehv1_5_super with
      WORLDPLAY_FAST_DECODER=taehv1_5_super)

environment:
  HF_TOKEN                       Hugging Face read token (gated repos need the licence accepted)
  WORLDPLAY_MODEL_DIR            local-layout folder to read from (and default DIR)
  RUNPOD_HF_CACHE                RunPod cached-model root (default {DEFAULT_RUNPOD_CACHE})
  HF_HUB_CACHE / HF_HOME         standard Hugging Face cache, also searched before downloading
  WORLDPLAY_BUNDLE_REPO          bundle repo id to look for in the caches
  WORLDPLAY_COMPONENTS_REPO      components repo (default {DEFAULT_COMPONENTS_REPO})
  WORLDPLAY_REPO                 WorldPlay repo (default {DEFAULT_WORLDPLAY_REPO})
  WORLDPLAY_COMPONENTS_REVISION  / WORLDPLAY_REVISION: branch, tag or commit (default main)
  WORLDPLAY_FAST_DECODER         fast decoder file: taehv1_5 (default) or taehv1_5_super
  WORLDPLAY_DOWNLOAD_ATTEMPTS    attempts per Hub call on transient errors (default 5)
  WORLDPLAY_RETRY_WAIT           first backoff wait in seconds, doubling (default 2)
  WORLDPLAY_RETRY_WAIT_MAX       longest backoff wait in seconds (default 60)
  HF_HUB_DISABLE_PROGRESS_BARS=1 hide progress bars (or pass --no-progress)

exit status: 0 done, 1 failed (problems or errors listed on stderr), 2 bad usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download_models.py",
        description=(
            "Fetch exactly the HY-WorldPlay files the worker needs (~40 GB in bf16 for one model,\n"
            "not the ~90 GB of whole repos) into a local-layout folder, verify such a folder\n"
            "offline, or assemble a single-repo bundle for RunPod cached models."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action", nargs="?", choices=("fetch", "check", "bundle"), default=None,
        help="what to do (default: fetch)",
    )
    parser.add_argument(
        "--model", default=None, metavar="NAMES",
        help=f"which WorldPlay checkpoint(s) to include, comma separated: {', '.join(MODEL_NAMES)} or all "
             "(default: ar_distilled; ar_distilled,bidirectional for bundle)",
    )
    parser.add_argument(
        "--mode", choices=tuple(MODE_ALIASES) + ("all",), default=None,
        help="older alias of --model: ar = ar_distilled, bidirectional, all = both",
    )
    parser.add_argument(
        "--sr", action="store_true",
        help=f"also the 720p super-resolution stage ({SR_REPO}: transformer/ and upsampler/ 720p_sr_distilled)",
    )
    parser.add_argument(
        "--dest", metavar="DIR", default=None,
        help="target folder in the local layout (default: $WORLDPLAY_MODEL_DIR)",
    )
    parser.add_argument("--check", action="store_true", help="same as the `check` action")
    parser.add_argument(
        "--no-download", action="store_true",
        help="fetch/bundle: only copy from local caches, never contact the Hub",
    )
    parser.add_argument(
        "--repo-id", metavar="ORG/NAME", default=None,
        help="bundle: the repo id to show in the upload command (default: <your-user>/HY-WorldPlay-worker-bundle)",
    )
    parser.add_argument("--fast-decoder", action="store_true",
                        help="also fetch / check the fast decoder's weights (DIR/TAEHV/taehv1_5.safetensors)")
    parser.add_argument("--no-progress", action="store_true", help="hide download progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _action(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.check and args.action not in (None, "check"):
        parser.error(f"--check cannot be combined with the `{args.action}` action")
    if args.check:
        return "check"
    return args.action or "fetch"


def _dest(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    dest = args.dest or os.environ.get("WORLDPLAY_MODEL_DIR")
    if not dest:
        parser.error("--dest DIR is required (or set WORLDPLAY_MODEL_DIR)")
    return Path(dest)


def _label(models, sr: bool = False, fast_decoder: bool = False) -> str:
    models = (models,) if isinstance(models, str) else tuple(models)
    return ",".join(models) + (" + sr" if sr else "") + (" + fast decoder" if fast_decoder else "")


def run_check(dest: Path, models, sr: bool = False, fast_decoder: bool = False) -> int:
    problems = check_model_dir(dest, models, sr=sr)
    if fast_decoder:
        name = chosen_file() or DEFAULT_FILE
        path = dest / FAST_DECODER_DIRNAME / name
        problems += check_published(path, name) if path.exists() else [f"{path}: missing (--fast-decoder)"]
    if problems:
        print(f"{dest}: {len(problems)} problem(s) for {_label(models, sr, fast_decoder)}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{dest}: complete for {_label(models, sr, fast_decoder)}")
    return 0


def run_fetch(dest: Path, models, *, allow_download: bool, dest_label: str | None = None, sr: bool = False,
              fast_decoder: bool = False) -> int:
    """``dest_label``: how the user named ``dest`` (``--dest D`` or ``WORLDPLAY_MODEL_DIR=D``), for errors."""
    t0 = time.perf_counter()
    try:
        paths, origins = prefetch(models, dest, allow_download=allow_download, sr=sr)
    except ModelNotFoundError as exc:
        if allow_download:
            raise
        raise ModelNotFoundError(f"{dest_label or f'--dest {dest}'}: {exc.message}; run without --no-download to fetch "
                                 "only the missing files") from None
    for key, origin in origins.items():
        path = {"components": paths.components, "sr": paths.sr}.get(key) or paths.transformer[key]
        print(f"{key:<14} {origin}\n{'':<14} -> {path}")
    # checkpoints with their configs
    folders = ([paths.components] + [p.parent for p in paths.transformer.values()]
               + [p.parent for p in paths.sr_files.values()])
    if fast_decoder:
        path, origin = prefetch_fast_decoder(dest, Settings.from_env(allow_download=allow_download), snapshot_dirs,
                                             allow_download=allow_download)
        print(f"{'fast_decoder':<14} {origin}\n{'':<14} -> {path}")
        folders.append(path.parent)
    total = sum(f.stat().st_size for d in folders for f in d.rglob("*")
                if f.is_file() and ".cache" not in f.relative_to(d).parts)
    print(f"total size: {fmt_bytes(total)} ({total} bytes) in {dest} [{time.perf_counter() - t0:.1f}s]")
    return 0


def _bundle_files(dest: Path) -> list[dict]:
    files = []
    for p in sorted(dest.rglob("*")):
        rel = p.relative_to(dest)
        if not p.is_file() or ".cache" in rel.parts or rel.as_posix() in (BUNDLE_MANIFEST, "README.md"):
            continue
        files.append({"path": rel.as_posix(), "size": p.stat().st_size})
    return files


def _model_card(models, total: int, sr: bool = False) -> str:
    return f"""---
license: other
license_name: tencent-hy-worldplay-community
tags:
  - image-to-video
  - world-model
  - runpod
---

# HY-WorldPlay worker bundle (models: {_label(models, sr)})

Only the files the worldplay-worker needs, in one repo, for use as a RunPod cached model
(set the endpoint's cached model to this repo, or `WORLDPLAY_BUNDLE_REPO` to its id).
Total {fmt_bytes(total)}.

- `{COMPONENTS_DIRNAME}/`: from `{DEFAULT_COMPONENTS_REPO}` without `transformer/`.
- `{WORLDPLAY_DIRNAME}/`: the WorldPlay checkpoint(s) from `{DEFAULT_WORLDPLAY_REPO}`.
{f"- `{SR_DIRNAME}/`: the 720p super-resolution stage from `{SR_REPO}`." if sr else ""}

The weights are governed by the Tencent HY-WorldPlay Community License (not licensed in the EU,
the UK or South Korea; a separate licence is needed above 1 million monthly active users) and by
the licences of the upstream component repos. Keep this repo private unless redistribution is
permitted to you.
"""


def run_bundle(dest: Path, models, *, allow_download: bool, repo_id: str | None, dest_label: str | None = None,
               sr: bool = False, fast_decoder: bool = False) -> int:
    run_fetch(dest, models, allow_download=allow_download, dest_label=dest_label, sr=sr, fast_decoder=fast_decoder)
    files = _bundle_files(dest)
    total = sum(f["size"] for f in files)
    manifest = {
        "format": "worldplay-worker-bundle/1",
        "models": list(models),
        "modes": list(dict.fromkeys(m for m, model in MODE_ALIASES.items() if model in models)),
        "sr": sr,
        "layout": {"components": COMPONENTS_DIRNAME, "worldplay": WORLDPLAY_DIRNAME,
                   **({"sr": SR_DIRNAME} if sr else {})},
        "sources": {"components": DEFAULT_COMPONENTS_REPO, "worldplay": DEFAULT_WORLDPLAY_REPO,
                    **({"sr": SR_REPO} if sr else {})},
        "total_bytes": total,
        "files": files,
    }
    (dest / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (dest / "README.md").write_text(_model_card(models, total, sr))
    repo = repo_id or "<your-user>/HY-WorldPlay-worker-bundle"
    cmd = (
        f"hf upload {shlex.quote(repo)} {shlex.quote(str(dest))} . --repo-type model --private "
        f"--exclude '.cache/*' --exclude '*/.cache/*'"
    )
    print(f"bundle ready: {len(files)} files, {fmt_bytes(total)} in {dest}")
    print("push it as one repo (huggingface_hub >= 1.0 CLI; with older versions use `huggingface-cli upload`):")
    print(f"  HF_TOKEN=<write token> {cmd}")
    print(f"then select {repo} as the endpoint's cached model (or set WORLDPLAY_BUNDLE_REPO={repo}).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    action = _action(args, parser)
    dest = _dest(args, parser)
    dest_label = f"--dest {dest}" if args.dest else f"WORLDPLAY_MODEL_DIR={dest}"
    try:
        if args.model is not None and args.mode is not None:
            parser.error("give --model or its older alias --mode, not both")
        if args.model is not None:
            models = parse_model_list(args.model.split(","))
        else:
            models = parse_model_list([args.mode or ("all" if action == "bundle" else "ar")], legacy_modes=True)
    except ValueError as exc:
        parser.error(f"--model: {exc}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.no_progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        if action == "check":
            return run_check(dest, models, args.sr, args.fast_decoder)
        if action == "bundle":
            return run_bundle(dest, models, allow_download=not args.no_download, repo_id=args.repo_id,
                              dest_label=dest_label, sr=args.sr, fast_decoder=args.fast_decoder)
        return run_fetch(dest, models, allow_download=not args.no_download, dest_label=dest_label, sr=args.sr,
                         fast_decoder=args.fast_decoder)
    except PipelineError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
