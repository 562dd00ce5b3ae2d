"""``python -m tools.live_tiny [worker.live options]``: the live server on tiny random-weight models
(CPU, no download, no GPU): writes them to a temp folder (pipeline.tools.tiny, like the demo's
``--tiny``), points WORLDPLAY_MODEL_DIR at it and runs ``python -m worker.live``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    from pipeline.tools.tiny import write_tiny_models

    with tempfile.TemporaryDirectory(prefix="worldplay-live-tiny-") as root:
        write_tiny_models(Path(root), models=("ar_distilled",))
        os.environ.update(WORLDPLAY_MODEL_DIR=root, WORLDPLAY_ALLOW_DOWNLOAD="0", WORLDPLAY_MODES="ar")
        os.environ.setdefault("WORLDPLAY_DEVICE", "cpu")
        from worker.live import main as live_main

        return live_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
