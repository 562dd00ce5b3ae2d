"""`.ci/run`'s choice of torch wheel (issue 23, item 6), checked without installing anything:
`bash .ci/run --which-torch` prints the index it would install torch from and exits.

No NVIDIA GPU (no working `nvidia-smi -L`) -> the CPU-only index, but only when it answers (CI reaches
PyPI-like registries only: there it must fall back to pip's configured index, where a local torch
2.13.0 waits); a GPU -> pip's configured index; TORCH_INDEX_URL, even empty, always wins."""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIGURED = "torch index: pip's configured index"


class _Index(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        _Index.seen.append(self.path)
        self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
        self.end_headers()


@pytest.fixture
def cpu_index():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/whl/cpu"
    httpd.shutdown()
    httpd.server_close()


def which_torch(tmp_path, **env) -> str:
    stub = tmp_path / "nvidia-smi-stub"
    stub.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    stub.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "TORCH_CPU_INDEX_URL")}
    full.update({"NVIDIA_SMI": str(tmp_path / "absent-nvidia-smi"), "TORCH_INDEX_PROBE_SECONDS": "3"})
    full.update({k: (str(stub) if v == "stub" else v) for k, v in env.items()})
    done = subprocess.run(["bash", ".ci/run", "--which-torch"], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (REPO / ".venv-which-torch").exists()
    return done.stdout.strip()


def test_no_gpu_and_a_reachable_cpu_index_takes_the_cpu_wheels(tmp_path, cpu_index):
    assert which_torch(tmp_path, TORCH_CPU_INDEX_URL=cpu_index, VENV=".venv-which-torch") == \
        f"torch index: {cpu_index}"
    assert "/whl/cpu/torch/" in _Index.seen


def test_no_gpu_and_an_unreachable_cpu_index_falls_back_to_the_configured_index(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/whl/cpu"  # nothing listens: as in CI, where only PyPI answers
    assert which_torch(tmp_path, TORCH_CPU_INDEX_URL=closed) == CONFIGURED


def test_a_gpu_keeps_the_default_cuda_wheel(tmp_path, cpu_index):
    assert which_torch(tmp_path, NVIDIA_SMI="stub", TORCH_CPU_INDEX_URL=cpu_index) == CONFIGURED


def test_torch_index_url_wins_even_empty(tmp_path, cpu_index):
    assert which_torch(tmp_path, TORCH_INDEX_URL="https://example.org/simple",
                       TORCH_CPU_INDEX_URL=cpu_index) == "torch index: https://example.org/simple"
    assert which_torch(tmp_path, TORCH_INDEX_URL="", TORCH_CPU_INDEX_URL=cpu_index) == CONFIGURED


def test_the_install_uses_the_choice_and_falls_back_only_when_it_guessed():
    ci = (REPO / ".ci" / "run").read_text()
    assert '--index-url "$TORCH_INDEX"' in ci and "python -m pytest -q tests" in ci
    install = ci[ci.index('if [[ -n "$TORCH_INDEX" ]]; then\n  echo "== installing'):]
    assert 'if [[ -n "${TORCH_INDEX_URL+set}" ]]; then\n      exit 1' in install  # asked for: no fallback
    assert install.count('"$PY" -m pip install --quiet torch==2.13.0 </dev/null') == 2  # the fallback + GPU path
    assert ci.index("choose_torch_index)") < ci.index('"$PYTHON" -m venv')  # decided before any install
