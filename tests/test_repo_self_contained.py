"""The repository carries everything its code and tests need: nothing reads beside the clone.

A fresh clone with nothing next to it must pass ``bash .ci/run``; a folder that happens to sit beside
the checkout (the workspace's ``shared/``) must never be read by code or tests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Code that runs (worker, model, contract, CLIs) and the tests themselves.
SCANNED_DIRS = ("tests", "pipeline", "worker", "schemas", "tools", ".ci")
SCANNED_ROOT_FILES = ("Dockerfile",)  # + every *.py and *.sh at the root
SCANNED_SUFFIXES = {".py", ".sh", ".json", ".toml", ".cfg", ".ini", ""}

# Ways to reach a folder beside the clone: a relative climb to "shared", the workspace's reference
# folder by name, or a Path climb above the repository root (parents[2] of a file in tests/).
OUTSIDE = [
    re.compile(r"\.\./+shared"),
    re.compile(r"shared[/\\]reference"),
    re.compile(r"[\"']shared[\"']\s*/"),
    re.compile(r"parents\[(?:[2-9]|\d\d)\]"),
    re.compile(r"WORLDPLAY_REFERENCE_DIR"),
]


def scanned_files() -> list[Path]:
    files = [REPO / name for name in SCANNED_ROOT_FILES if (REPO / name).is_file()]
    files += [p for p in sorted(REPO.glob("*.py")) + sorted(REPO.glob("*.sh")) if p not in files]
    for folder in SCANNED_DIRS:
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.resolve() == THIS:
                continue
            if path.suffix in SCANNED_SUFFIXES and path.stat().st_size < 1_000_000:
                files.append(path)
    return files


def test_scan_covers_the_code():
    names = {p.relative_to(REPO).as_posix() for p in scanned_files()}
    for expected in ("handler.py", "smoke_test.py", "local_s3.py", "worker/job.py", "pipeline/dit/checkpoint.py", "tests/test_transformer.py",
                     "tests/conftest.py", ".ci/run", "entrypoint.sh"):
        assert expected in names


def test_no_code_or_test_reads_outside_the_repository():
    hits = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern in OUTSIDE:
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not hits, "code/tests reach outside the repository:\n" + "\n".join(hits)


def test_checkpoint_reference_table_is_in_the_repository():
    table = REPO / "tests" / "data" / "worldplay_checkpoint_keys.tsv"
    assert table.is_file()
    assert table.stat().st_size < 100_000
    rows = [line for line in table.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(rows) == 1905  # every tensor of the official checkpoints
    assert all(len(row.split("\t")) == 2 for row in rows)


def test_reference_table_is_tracked_by_git():
    """Untracked files would pass here and vanish from a fresh clone."""
    try:
        proc = subprocess.run(["git", "ls-files", "--error-unmatch", "tests/data/worldplay_checkpoint_keys.tsv"],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git not available")
    if "not a git repository" in proc.stderr.lower():
        pytest.skip("not a git checkout (e.g. an exported tree)")
    assert proc.returncode == 0, proc.stderr
