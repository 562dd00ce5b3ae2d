# syntax=docker/dockerfile:1.7
# HY-WorldPlay RunPod serverless worker.
#
#   docker build -t worldplay-worker .                                   # no weights (cached model / download)
#   docker build --build-arg BAKE_MODE=ar \
#       --secret id=hf_token,env=HF_TOKEN -t worldplay-worker:ar .       # bake the AR weights (~40 GB)
#
# The Hugging Face token is only ever a BuildKit secret: it is never in a layer, an ARG or an ENV.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from the CUDA 12.8 wheel index, pinned to the same version as requirements.txt.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

WORKDIR /app
COPY requirements.txt requirements-gpu.txt /app/
RUN pip install -r /app/requirements.txt
# FlashAttention-4 for the DiT (GPU image only; the worker falls back to PyTorch SDPA without it).
RUN pip install -r /app/requirements-gpu.txt

# Code (no weights).
COPY handler.py download_models.py smoke_test.py test_input.json entrypoint.sh /app/
COPY pipeline/ /app/pipeline/
COPY schemas/ /app/schemas/
COPY worker/ /app/worker/
COPY viewer/ /app/viewer/
RUN chmod +x /app/entrypoint.sh /app/download_models.py

# Optional: bake one mode's weights into the image (none | ar | bidirectional | all).
ARG BAKE_MODE=none
RUN --mount=type=secret,id=hf_token,required=false \
    set -eu; \
    mkdir -p /models; \
    if [ "$BAKE_MODE" != "none" ]; then \
      export HF_HOME=/tmp/hf-build HF_XET_HIGH_PERFORMANCE=1; \
      if [ -s /run/secrets/hf_token ]; then HF_TOKEN="$(cat /run/secrets/hf_token)"; export HF_TOKEN; fi; \
      python download_models.py --mode "$BAKE_MODE" --dest /models --no-progress; \
      python download_models.py --check --mode "$BAKE_MODE" --dest /models; \
      find /models -type d -name .cache -prune -exec rm -rf {} +; \
      rm -rf /tmp/hf-build; \
    fi

# Where the resolver looks: baked folder first (empty unless BAKE_MODE was set), then the
# RunPod cached model, then this HF cache (a network volume keeps downloads across workers).
ENV WORLDPLAY_MODEL_DIR=/models \
    RUNPOD_HF_CACHE=/runpod-volume/huggingface-cache/hub \
    HF_HUB_CACHE=/runpod-volume/huggingface-cache/hub \
    WORLDPLAY_ALLOW_DOWNLOAD=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

# The live server (WORLDPLAY_SERVE=live) listens on PORT (default 8000); the queue handler needs no port.
EXPOSE 8000
ENTRYPOINT ["/app/entrypoint.sh"]
