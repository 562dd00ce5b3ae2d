"""Where the user-facing documentation lives (README.md and docs/), for the tests that check it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a user reads: the README's one screen and the references it links to
USER_DOCS = ("README.md", "docs/INPUTS.md", "docs/SESSIONS.md", "docs/DEPLOY.md", "docs/LOCAL.md",
             "docs/ENVIRONMENT.md", "docs/ERRORS.md", "docs/LIVE.md")
# where each reference table lives (same table formats as the README had)
INPUTS_DOC = "docs/INPUTS.md"  # "## Input (`job["input"]`)" and "## Output" (+ preview, no-storage mode)
ENVIRONMENT_DOC = "docs/ENVIRONMENT.md"  # every "| variable | default | meaning |" table
ERRORS_DOC = "docs/ERRORS.md"  # the "| code | meaning |" table
DEPLOY_DOC = "docs/DEPLOY.md"
LOCAL_DOC = "docs/LOCAL.md"


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def all_user_docs() -> str:
    return "\n".join(read(name) for name in USER_DOCS)
