"""The tree tells the architecture: each part of ``pipeline/`` imports only the layers below it
(tests/test_imports.py checks that there is no import cycle). Imports are read with ``ast``
(function-level ones too), so nothing is imported to check this."""

from __future__ import annotations

import ast
import re
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
    "sr": BASE | {"dit"},  # the SR transformer is the HunyuanVideo-1.5 DiT, built on dit's layers
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


def _top_level_imports(path: Path) -> set[str]:
    """The first name of every module this file imports, at any depth (a lazy import inside a
    function counts as much as one at the top); relative imports resolve inside the file's package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_model_package_never_imports_the_worker(path):
    """``pipeline`` runs without ``worker`` (the demo, the benchmarks, sequence-parallel followers): not
    even a lazy ``import worker`` inside a function, nor the developer tools that drive the worker."""
    bad = sorted(_top_level_imports(path) & {"worker", "schemas", "handler", "tools"})
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    text = path.read_text()
    assert not re.search(r"^\s*(?:import worker\b|from worker\b)", text, flags=re.M), path


def test_the_lazy_import_check_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def version():\n    from worker import __version__\n    return __version__\n"
                      "def other():\n    import importlib\n    return importlib.import_module('tools.x')\n")
    assert {"worker", "tools", "importlib"} <= _top_level_imports(sample)


def test_the_serving_path_does_not_use_developer_tools():
    """Nothing that serves jobs imports ``pipeline.tools`` or the top-level ``tools`` package (which
    holds developer tools that drive the worker, e.g. ``python -m tools.preview_bench``)."""
    serving = sorted((ROOT / "worker").rglob("*.py")) + sorted((ROOT / "schemas").rglob("*.py"))
    for path in [ROOT / "handler.py", ROOT / "download_models.py", *serving]:
        bad = sorted(m for m in _imports(path) if m.startswith("pipeline.tools"))
        assert not bad, f"{path.relative_to(ROOT)} imports developer tools {bad}"
        assert "tools" not in _top_level_imports(path), f"{path.relative_to(ROOT)} imports the tools package"
    assert not (ROOT / "worker" / "preview_bench.py").exists()  # it lives in tools/ now
