#!/usr/bin/env bash
# Container entrypoint of the HY-WorldPlay RunPod worker.
#
# Sets safe defaults, fails fast when no GPU is visible, says how storage is set up, then replaces
# itself with the handler. Missing storage settings never stop the worker: with none of MINIO_* set
# videos come back inline (video_base64, small ones); with some missing, health names them and
# every job answers STORAGE_NOT_CONFIGURED. Never prints secret values.
#
# Environment (all optional unless marked):
#   MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_BUCKET   output storage (all or none)
#   WORLDPLAY_ALLOW_CPU=1     start without a visible GPU (tests, CPU smoke runs)
#   WORLDPLAY_SEQUENCE_PARALLEL  ranks (GPUs) per pass: N or auto (default 1); N > visible GPUs fails here
#   WORLDPLAY_SERVE           queue (default: the RunPod queue handler) or live (python -m worker.live:
#                             the live-world server on PORT, health on PORT_HEALTH; load-balancing endpoints;
#                             WORLDPLAY_FAST_DECODER defaults to taehv1_5 there: fetched when missing)
#   WORLDPLAY_LOCAL_SERVE=1   run RunPod's local API server (--rp_serve_api on 0.0.0.0)
#   WORLDPLAY_LOCAL_PORT      port of that server (default: the SDK's, 8000)
#   WORLDPLAY_PYTHON          python command to run (default: python)
#   WORLDPLAY_MODEL_DIR       baked / mounted weights in the local layout
#   RUNPOD_HF_CACHE           RunPod cached-model root (default /runpod-volume/huggingface-cache/hub)
#   WORLDPLAY_ALLOW_DOWNLOAD  fetch missing weights from the Hub at cold start (default 1)
#   HF_HUB_OFFLINE            forced to 1 when weights are on disk, unless already set
set -euo pipefail

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() { printf 'entrypoint: ERROR: %s\n' "$*" >&2; exit 1; }

# --- defaults ---------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export WORLDPLAY_ALLOW_DOWNLOAD="${WORLDPLAY_ALLOW_DOWNLOAD:-1}"
RUNPOD_HF_CACHE="${RUNPOD_HF_CACHE:-/runpod-volume/huggingface-cache/hub}"
export RUNPOD_HF_CACHE

weights_local=""
if [[ -n "${WORLDPLAY_MODEL_DIR:-}" && -f "${WORLDPLAY_MODEL_DIR}/HunyuanVideo-1.5-480p_i2v/model_index.json" \
      && -d "${WORLDPLAY_MODEL_DIR}/HY-WorldPlay" ]]; then
    weights_local="WORLDPLAY_MODEL_DIR=${WORLDPLAY_MODEL_DIR}"
elif [[ -d "${RUNPOD_HF_CACHE}" ]] && compgen -G "${RUNPOD_HF_CACHE}/models--*/snapshots/*" >/dev/null; then
    weights_local="RunPod model cache ${RUNPOD_HF_CACHE}"
fi

if [[ -n "${weights_local}" ]]; then
    if [[ -z "${HF_HUB_OFFLINE:-}" ]]; then
        # Chosen here, not by the user: the resolver may lift it to fetch a missing file when
        # WORLDPLAY_ALLOW_DOWNLOAD=1, and sets it again once everything is on disk.
        export HF_HUB_OFFLINE=1
        export WORLDPLAY_AUTO_OFFLINE=1
    fi
    log "weights found in ${weights_local}; HF_HUB_OFFLINE=${HF_HUB_OFFLINE}"
else
    # Faster Hub downloads (huggingface_hub >= 1.0 uses Xet; hf_transfer is no longer used).
    export HF_XET_HIGH_PERFORMANCE="${HF_XET_HIGH_PERFORMANCE:-1}"
    log "no local weights found; missing files will be fetched (WORLDPLAY_ALLOW_DOWNLOAD=${WORLDPLAY_ALLOW_DOWNLOAD})"
fi

# --- fail fast --------------------------------------------------------------------------------
if [[ "${WORLDPLAY_ALLOW_CPU:-0}" != "1" ]]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        die "no GPU visible: nvidia-smi not found. Run on a GPU worker (80 GB class), or set WORLDPLAY_ALLOW_CPU=1 for CPU-only tests."
    fi
    if ! gpus="$(nvidia-smi -L 2>&1)" || [[ -z "${gpus}" ]]; then
        die "no GPU visible: 'nvidia-smi -L' failed (${gpus:-no output}). Check the GPU type and CUDA version of the endpoint, or set WORLDPLAY_ALLOW_CPU=1 for CPU-only tests."
    fi
    log "GPU: ${gpus%%$'\n'*}"
    gpu_count=0
    while IFS= read -r line; do [[ "${line}" == GPU\ * ]] && gpu_count=$((gpu_count + 1)); done <<<"${gpus}"
    sp="${WORLDPLAY_SEQUENCE_PARALLEL:-1}"
    if [[ "${sp}" =~ ^[0-9]+$ ]] && (( sp > gpu_count )); then
        die "WORLDPLAY_SEQUENCE_PARALLEL=${sp} but ${gpu_count} GPU(s) are visible. Set 'GPUs per worker' on the endpoint to at least ${sp}, or lower WORLDPLAY_SEQUENCE_PARALLEL (auto = every GPU)."
    fi
else
    log "WORLDPLAY_ALLOW_CPU=1: skipping the GPU check"
fi

missing=()
for name in MINIO_ENDPOINT MINIO_ACCESS_KEY MINIO_SECRET_KEY MINIO_BUCKET; do
    if [[ -z "${!name:-}" ]]; then
        missing+=("${name}")
    fi
done
if (( ${#missing[@]} == 4 )); then
    log "no MINIO_* variables set: no-storage mode, videos come back inline as video_base64 (up to WORLDPLAY_INLINE_MAX_BYTES); image_key / pose_key inputs need a bucket"
elif (( ${#missing[@]} > 0 )); then
    log "WARNING: missing storage variable(s): ${missing[*]}; the worker starts, health reports them and every job fails with STORAGE_NOT_CONFIGURED until they are set in the endpoint's environment (values are never logged)"
else
    log "storage: all MINIO_* set; the bucket is checked before each job generates"
fi

# --- run --------------------------------------------------------------------------------------
PY="${WORLDPLAY_PYTHON:-python}"
serve="${WORLDPLAY_SERVE:-queue}"
cd "$(dirname "${BASH_SOURCE[0]}")"
case "${serve}" in
    queue) ;;
    live)
        # a live world streams through the fast decoder: fetched (pinned, checked) when not on disk, unless
        # WORLDPLAY_FAST_DECODER says otherwise (0: none, the full VAE streams)
        export WORLDPLAY_FAST_DECODER="${WORLDPLAY_FAST_DECODER-taehv1_5}"
        log "WORLDPLAY_SERVE=live: live-world server on port ${PORT:-8000} (health on ${PORT_HEALTH:-${PORT:-8000}}), fast decoder ${WORLDPLAY_FAST_DECODER:-none}"
        # shellcheck disable=SC2086
        exec ${PY} -u -m worker.live "$@"
        ;;
    *) die "WORLDPLAY_SERVE=${serve} is not queue or live" ;;
esac
args=()
if [[ "${WORLDPLAY_LOCAL_SERVE:-0}" == "1" ]]; then
    args+=(--rp_serve_api --rp_api_host 0.0.0.0)
    if [[ -n "${WORLDPLAY_LOCAL_PORT:-}" ]]; then
        args+=(--rp_api_port "${WORLDPLAY_LOCAL_PORT}")
    fi
fi
# shellcheck disable=SC2086  # WORLDPLAY_PYTHON may carry arguments (e.g. "python -X faulthandler")
exec ${PY} -u handler.py "${args[@]}" "$@"
