"""Issue 23, item 10: small rough edges a newcomer hits — local_s3.py uploads an input image, and
tools/preview_bench.py --paced says how long it will take before it starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port, png_bytes

REPO = Path(__file__).resolve().parents[1]


def _wait_for_line(proc, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(proc.stderr.read() if proc.poll() is not None else f"no line starting {prefix!r}")


def test_local_s3_uploads_an_input_image_the_worker_can_read(tmp_path):
    import local_s3
    from worker.storage import Storage

    image = tmp_path / "street.png"
    image.write_bytes(png_bytes())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "local_s3.py", "--port", str(port), "--bucket", "inputs",
                             "--upload", str(image), "in/street.png"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, "export ")
        assert "'in/street.png'" in _wait_for_line(proc, "uploaded ")
        env = local_s3.settings("127.0.0.1", port, "inputs")
        storage = Storage.from_env(env)
        assert storage.get_bytes("in/street.png", 10**7) == image.read_bytes()
        assert storage.stat_size("in/street.png") == image.stat().st_size
        # a second call while the server runs only uploads, then exits
        second = subprocess.run([sys.executable, "local_s3.py", "--port", str(port), "--bucket", "inputs",
                                 "--upload", str(image), "in/again.png"], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "send \"image_key\": \"in/again.png\"" in second.stdout
        assert storage.get_bytes("in/again.png", 10**7) == image.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    missing = subprocess.run([sys.executable, "local_s3.py", "--upload", str(tmp_path / "nope.png"), "k"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_paced_preview_bench_says_how_long_first(monkeypatch):
    from tools import preview_bench

    assert 120 < preview_bench.paced_estimate(125, 1.42, 2.9, 3) < 150  # the default: over two minutes
    assert preview_bench.paced_estimate(13, 0.1, 0.1, 1) < 3
    done = subprocess.run([sys.executable, "-m", "tools.preview_bench", "--paced", "--frames", "13",
                           "--first", "0.1", "--gap", "0.1", "--repeat", "1", "--width", "160",
                           "--height", "96"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("paced: 2 runs") and "about 2 s" in first, first
