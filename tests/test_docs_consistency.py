"""The README, its references in docs/ and docs/ARCHITECTURE.md against the code: what a reader can
look up must exist.

Cheap, text-only checks (no model is built): the environment tables (docs/ENVIRONMENT.md) name only
variables the code reads, and every variable the code reads is in them; the error-code table
(docs/ERRORS.md) is exactly the code's code table (with the same refresh marks); the input / output
field tables (docs/INPUTS.md) match the schema; every module of ARCHITECTURE's tree exists and every
module is in the tree; files, links and ``python -m`` commands the README and docs name exist; the
README stays one screen that points to every reference.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from docs_files import ENVIRONMENT_DOC, ERRORS_DOC, INPUTS_DOC, USER_DOCS, read

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
ENVIRONMENT = read(ENVIRONMENT_DOC)
ERRORS = read(ERRORS_DOC)
INPUTS = read(INPUTS_DOC)

# the code that runs in the worker or its container, and the developer tools beside it (tests and docs excluded)
CODE_DIRS = ("pipeline", "worker", "schemas", "tools")
CODE_FILES = ("handler.py", "download_models.py", "local_s3.py", "smoke_test.py")
SHELL_FILES = ("entrypoint.sh", "Dockerfile")
# read by the code, set by the entrypoint for the code (not a user setting)
INTERNAL_ENV = {"WORLDPLAY_AUTO_OFFLINE"}


def _section(text: str, heading: str) -> str:
    """From the heading line to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    stop = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: stop.start()] if stop else rest


def _table_first_cells(section: str) -> list[str]:
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [row.split("|")[1] for row in rows[1:] if not row.startswith("| variable") and not row.startswith("| code")]


def _python_sources() -> str:
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")] + [ROOT / f for f in CODE_FILES]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def _shell_sources() -> str:
    lines = []
    for name in SHELL_FILES:
        lines += [ln for ln in (ROOT / name).read_text(encoding="utf-8").splitlines()
                  if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def _readme_env_vars() -> list[str]:
    section = ENVIRONMENT  # every table of docs/ENVIRONMENT.md
    names = [n for cell in _table_first_cells(section) for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)]
    assert len(names) > 30, "the environment tables were not found"
    return names


def _env_vars_read_by_python() -> set[str]:
    src = _python_sources()
    # os.environ["X"], os.environ.get("X"), os.getenv("X"), env.get("X"), env_flag / env_number("X"),
    # and module constants such as DEADLINE_ENV = "X"
    found = set(re.findall(r"""(?:environ(?:\.get)?|getenv|env\.get|env_flag|env_number|storage_number\(\s*env,)"""
                           r"""[\[(]?\s*["']([A-Z][A-Z0-9_]+)["']""", src))
    found |= set(re.findall(r"""^\s*[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", src, flags=re.M))
    return found


def test_every_env_var_in_the_readme_tables_is_read_by_the_code():
    python_src, shell_src = _python_sources(), _shell_sources()
    unread = [n for n in _readme_env_vars()
              if not re.search(rf"""["']{n}["']""", python_src) and not re.search(rf"\b{n}\b", shell_src)]
    assert not unread, f"docs/ENVIRONMENT.md's tables name variables no code reads: {unread}"


def test_every_worker_env_var_the_code_reads_is_in_the_readme():
    documented = set(_readme_env_vars())
    ours = {n for n in _env_vars_read_by_python() if n.startswith(("WORLDPLAY_", "MINIO_"))}
    assert "WORLDPLAY_MODES" in ours and "MINIO_ENDPOINT" in ours, "the env-read pattern found nothing"
    missing = sorted(ours - documented - INTERNAL_ENV)
    assert not missing, f"the code reads variables docs/ENVIRONMENT.md's tables do not name: {missing}"


def _readme_error_rows() -> dict[str, bool]:
    rows = {}
    for cell in _table_first_cells(ERRORS):
        code = re.search(r"`([A-Z_]+)`", cell)
        assert code, cell
        rows[code.group(1)] = "↻" in cell
    return rows


def test_error_code_table_is_exactly_the_codes_the_worker_returns():
    from worker.errors import ERROR_CODES

    rows = _readme_error_rows()
    assert set(rows) == set(ERROR_CODES), (
        f"only in docs/ERRORS.md: {sorted(set(rows) - set(ERROR_CODES))}; "
        f"only in worker/errors.py: {sorted(set(ERROR_CODES) - set(rows))}")
    marked_wrong = [c for c, refresh in rows.items() if refresh != ERROR_CODES[c][0]]
    assert not marked_wrong, f"the ↻ (refresh_worker) mark disagrees with worker/errors.py for {marked_wrong}"


def test_every_code_the_code_raises_is_a_known_code():
    import pipeline.errors as perr
    from worker.errors import ERROR_CODES

    pipeline_codes = {cls.code for cls in vars(perr).values()
                      if isinstance(cls, type) and issubclass(cls, perr.PipelineError) and cls is not perr.PipelineError
                      and getattr(cls, "reaches_clients", True)}  # RANK0_FAILED stays between ranks
    assert pipeline_codes and pipeline_codes <= set(ERROR_CODES), sorted(pipeline_codes - set(ERROR_CODES))
    literal = set(re.findall(r"""WorkerError\(\s*["']([A-Z_]+)["']""", _python_sources()))
    assert literal and literal <= set(ERROR_CODES), sorted(literal - set(ERROR_CODES))


def _readme_fields(heading: str) -> set[str]:
    cells = _table_first_cells(_section(INPUTS, heading))
    return {re.search(r"`([a-z_.0-9]+)`", c).group(1) for c in cells if re.search(r"`([a-z_.0-9]+)`", c)}


def test_input_table_is_the_input_schema():
    from schemas.job import JobInput, OutputOptions

    schema = set(JobInput.model_fields) - {"output"} | {f"output.{f}" for f in OutputOptions.model_fields}
    table = _readme_fields("## Input (`job[\"input\"]`)")
    assert table == schema, f"only in docs/INPUTS.md: {sorted(table - schema)}; only in schemas/job.py: {sorted(schema - table)}"


def test_redecode_table_is_the_redecode_schema():
    from schemas.job import RedecodeInput

    assert _readme_fields("## Redecode a saved world") == set(RedecodeInput.model_fields)


def test_every_output_field_is_described_in_the_output_section():
    from schemas.job import JobOutput, Timings

    section = _section(INPUTS, "## Output")
    missing = [f for f in JobOutput.model_fields if f"`{f}`" not in section and f'"{f}"' not in section]
    assert not missing, f"output fields docs/INPUTS.md's Output section does not mention: {missing}"
    example = re.search(r"```json\n(.*?)```", section, flags=re.S).group(1)
    stages = set(re.search(r'"timings": \{(.*?)\}', example).group(1).replace('"', "").replace(" ", "").split(","))
    assert {s.split(":")[0] for s in stages} == {f.alias or n for n, f in Timings.model_fields.items()}


def test_documented_limits_are_the_code_defaults():
    import pipeline.limits as limits
    from pipeline.generation.world_state import SessionLimits
    from worker.delivery import DEFAULT_INLINE_MAX_BYTES

    env = ENVIRONMENT
    defaults = SessionLimits()
    assert f"| `WORLDPLAY_MAX_SESSION_LATENTS` | `{defaults.max_latents}` |" in env
    assert f"| `WORLDPLAY_MAX_SESSION_BYTES` | `{defaults.max_bytes}` " in env
    assert f"| `WORLDPLAY_INLINE_MAX_BYTES` | `{DEFAULT_INLINE_MAX_BYTES}` " in env
    assert f"{limits.MAX_LATENTS} latents = {limits.MAX_FRAMES} frames" in INPUTS
    assert limits.MAX_SESSION_LATENTS > limits.MAX_LATENTS  # a session outgrows one job


def _architecture_tree() -> list[str]:
    block = re.search(r"^```\n(.*?)^```", ARCHITECTURE, flags=re.S | re.M).group(1)
    paths, top, sub = [], None, None
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 8):  # blank or a continuation of a description
            continue
        indent = len(line) - len(line.lstrip())
        head = line.strip().split("  ")[0]  # the name column ends at the first double space
        names = [n.strip() for n in head.split(",")] if head.endswith(".py") or "," in head else [head]
        for name in names:
            if indent == 0:
                top, sub = (name.rstrip("/"), None) if name.endswith("/") else (None, None)
                if not name.endswith("/"):
                    paths.append(name)
            elif indent == 2 and name.endswith("/"):
                sub = name.rstrip("/")
            else:
                folder = top if indent == 2 else f"{top}/{sub}"
                if indent == 2:
                    sub = None
                paths.append(f"{folder}/{name}")
    return paths


def test_architecture_tree_names_existing_files_and_every_module():
    tree = _architecture_tree()
    assert "pipeline/dit/transformer.py" in tree and "worker/job.py" in tree, tree
    missing = [p for p in tree if not (ROOT / p).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"
    modules = sorted(str(p.relative_to(ROOT)) for d in ("pipeline", "worker", "schemas", "tools")
                     for p in (ROOT / d).rglob("*.py")
                     if p.name != "__init__.py")
    absent = [m for m in modules if m not in tree]
    assert not absent, f"modules missing from docs/ARCHITECTURE.md's tree: {absent}"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to -) and explicit <a id>s."""
    found = set(re.findall(r'<a id="([^"]+)">', text))
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


@pytest.mark.parametrize("doc", USER_DOCS)
def test_readme_paths_links_and_commands_exist(doc):
    text = read(doc)
    base = (ROOT / doc).parent
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if target.startswith("http"):
            continue
        path = (base / target).resolve() if target else ROOT / doc
        assert path.exists(), f"{doc} links to a missing file: {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path.read_text(encoding="utf-8")), \
                f"{doc} links to #{anchor}, which {path.name} has no heading for"
    named = set(re.findall(r"`((?:[\w.-]+/)*[\w.-]+\.(?:py|json|txt|md|html|sh))`", text))
    named |= set(re.findall(r"`((?:pipeline|worker|schemas|tests|docs|viewer|tools|\.ci|\.runpod)/[\w./-]*)`", text))
    missing = [p for p in sorted(named) if "{" not in p and not (ROOT / p).exists()
               and not p.startswith(("path", "demo", "out", "smoke", "world", "pose", "actions"))]
    assert not missing, f"{doc} names files that do not exist: {missing}"
    for module in set(re.findall(r"python -m ([a-z_][\w.]*)", text + ARCHITECTURE)):
        if module not in ("pytest",):
            assert importlib.util.find_spec(module) is not None, f"`python -m {module}` names no module"


@pytest.mark.parametrize("doc,heading", [(INPUTS_DOC, "## Input (`job[\"input\"]`)"),
                                         (ENVIRONMENT_DOC, None), (ERRORS_DOC, None)])
def test_no_table_row_is_repeated(doc, heading):
    text = read(doc)
    cells = [c.strip() for c in _table_first_cells(_section(text, heading) if heading else text)]
    repeated = sorted({c for c in cells if cells.count(c) > 1})
    assert not repeated, f"rows named twice in {doc} {heading or ''}: {repeated}"


# ---- the README is one screen that says where to go ---------------------------------------------
def test_readme_is_one_screen_that_points_to_every_reference():
    lines = README.splitlines()
    assert len(lines) <= 110, f"README has {len(lines)} lines: keep it one screen, move reference to docs/"
    for must in ("bash .ci/run --demo", "python -m pytest -q tests", "python -m tools.live_tiny",
                 "python -m pipeline.camera --check", "## Camera units", "## The smallest request"):
        assert must in README, must
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", README))
    for doc in USER_DOCS[1:] + ("docs/PERFORMANCE.md", "docs/ARCHITECTURE.md"):
        assert doc in linked, f"the README does not link {doc}"
    # the deploy checklist and the references are reachable from the README's first screen (its
    # first 60 lines hold the quick start and the links to DEPLOY and INPUTS)
    assert "docs/DEPLOY.md" in "\n".join(lines[:100]) and "docs/LOCAL.md" in "\n".join(lines[:25])
