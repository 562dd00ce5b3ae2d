"""RunPod entry point of the WorldPlay worker (thin: the job flow lives in ``worker.job``).

    python handler.py                          # local test mode: runs ./test_input.json
    python handler.py --test_input '{"input": {...}}'
    python handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
"""

import os

# The SDK logs whole jobs (base64 images included) at DEBUG, its default: keep it at INFO unless
# the operator asks otherwise. Must be set before runpod is imported.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

from worker.job import handler  # noqa: E402  (async; GPU work runs in a worker thread)


def main() -> None:
    import runpod

    from pipeline.settings import env_flag
    from worker.job import configure_logging, preload

    configure_logging()
    # Production (a RunPod queue) loads the models before taking the first job; local runs load
    # lazily on the first valid job. WORLDPLAY_PRELOAD=1/0 forces either way.
    on_platform = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    if env_flag("WORLDPLAY_PRELOAD", on_platform):
        preload()
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
