"""The tree tells the architecture: each part of ``pipeline/`` imports only the layers below it
(tests/test_imports.py checks that there is no import cycle). Imports are read with ``ast``
(function-level ones too), so nothing is imported to check this."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"

BASE = {"errors", "settings", "limits", "safetensors_header", "checkpoints"}  # plain leaf modules every part may use
# what each part may import from inside the package (besides itself)
ALLOWED = {
    "errors": set(),
    "settings": set(),
    "limits": set(),
    "safetensors_header": set(),
    "checkpoints": set(),
    "video": BASE,
    "dit": BASE,
    "encoders": BASE,
    "model_files": BASE,
    "sr": BASE,
    "generation": BASE | {"dit", "encoders", "video", "sr"},
    "tools": BASE | {"video", "dit", "encoders", "generation", "model_files", "sr"},
}
ENTRY_POINTS = {"__main__", "bench", "camera", "__init__"}  # thin public commands: `python -m pipeline[.x]`


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``pipeline.*`` module this file imports (absolute or relative, at any depth)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pipeline":
                continue
            found.add(mod)
            for a in node.names:  # `from pipeline.dit import transformer` imports a module
                if (ROOT / Path(*mod.split("."), a.name + ".py")).exists() or \
                        (ROOT / Path(*mod.split("."), a.name)).is_dir():
                    found.add(f"{mod}.{a.name}")
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_has_the_documented_parts():
    subpackages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert subpackages == {"dit", "encoders", "generation", "model_files", "sr", "tools"}
    for name in subpackages:  # each part says what it is
        assert ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_part_imports_only_the_layers_below_it(path):
    part = _part(_module_name(path))
    if path.parent == PKG and path.stem in ENTRY_POINTS:
        return  # a command-line entry point may reach any layer
    allowed = ALLOWED[part] | {part}
    bad = sorted(m for m in _imports(path) if m != "pipeline" and _part(m) not in allowed)
    assert not bad, f"{path.relative_to(ROOT)} ({part}) imports {bad}; {part} may use {sorted(allowed)}"


WORKER_DEV_TOOLS = {"worker/preview_bench.py"}  # the live preview's benchmark (`python -m worker.preview_bench`)


def test_the_serving_path_does_not_use_developer_tools():
    serving = [p for p in sorted((ROOT / "worker").rglob("*.py"))
               if str(p.relative_to(ROOT)) not in WORKER_DEV_TOOLS]
    for path in [ROOT / "handler.py", ROOT / "download_models.py", *serving]:
        bad = sorted(m for m in _imports(path) if m.startswith("pipeline.tools"))
        assert not bad, f"{path.relative_to(ROOT)} imports developer tools {bad}"
