"""Every ``from halo... import name`` outside ``halo/`` names something that exists.

The bench scripts import most of the library lazily, inside the stage that needs it, and no test
runs a full benchmark, so a renamed or moved function breaks them silently: after the package
restructure ``bench/bench_grasps.py`` still imported ``diversity`` and ``render_grasp`` from
``halo.grasp.pipeline`` until its table stage was run by hand.  This test parses every script and
glue module (module level and function bodies) and resolves each imported name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["bench", "scripts", "callbacks", "datamodules", "lightning_modules", "train.py"]


def _files() -> list[Path]:
    out: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _halo_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every ``from halo[.x] import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "halo" or node.module.startswith("halo."):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names if a.name.startswith("halo.")]
    return found


def test_the_scan_finds_the_lazy_imports_of_the_bench_scripts():
    imports = _halo_imports(ROOT / "bench" / "bench_grasps.py")
    assert ("halo.grasp.diversity", "grasp_diversity") in {(m, n) for _, m, n in imports}
    assert len(_files()) > 20


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imported_halo_names_exist(path: Path):
    missing = []
    for line, module_name, name in _halo_imports(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append(f"{path.name}:{line}: module {module_name} ({exc})")
            continue
        if name and name != "*" and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module_name} has no {name}")
    assert not missing, "\n".join(missing)
