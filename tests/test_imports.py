"""The import graph of ``halo/``: no cycles, no private names across modules, layers point one way.

Every module under ``halo/`` is parsed with :mod:`ast` (nothing is imported).  Every import
statement counts, at module level or inside a function (lazy imports), absolute or
relative.  ``from halo.a import b`` is an edge to the module ``halo.a.b`` when that is a
module, else to ``halo.a``.

Layers, lowest first, as the rows of DESIGN.md's package tree (a module may import its
own layer and any lower one, never a higher one; ``eval`` and ``viz`` share a row)::

    0 utils      atomic files, tables, keyed caches, progress, safe unpickling, allocator
    1 core       skeleton conventions, canonicalization, the network, HaloModel, checkpoints
    2 geometry   inside tests, mesh files, sealing
    3 meshing    isosurface extraction, the per-hand field, hand meshes
    4 hands      MANO files + layer, the synthetic hand, sequences
    5 data       on-disk layout, preparation, building, YouTube3D, keypoint files
    6 eval, viz  surface metrics and mesh evaluation; rendering, cameras, views
    7 grasp      GRAB data, records, objects, synthesizer, HALO-VAE, metrics
    8 cli        the ``halo`` command

So core, meshing, geometry and utils never import viz, data, grasp, eval, hands or cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

HALO = Path(__file__).resolve().parents[1] / "halo"

LAYERS: dict[str, int] = {
    "utils": 0,
    "core": 1,
    "geometry": 2,
    "meshing": 3,
    "hands": 4,
    "data": 5,
    "eval": 6,
    "viz": 6,
    "grasp": 7,
    "fit": 7,
    "cli": 8,
}

# Known violations (none left; an entry here must be a live violation).
ALLOWED_LAYER_EDGES: frozenset[tuple[str, str]] = frozenset()
# (importer, source module, private name)
ALLOWED_PRIVATE_IMPORTS: frozenset[tuple[str, str, str]] = frozenset()
ALLOWED_CYCLE_MODULES: frozenset[str] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(HALO.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(HALO.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve_from(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _scan(module: str, path: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """(halo modules imported, (module, private name) used from other modules)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    edges: set[str] = set()
    private: set[tuple[str, str]] = set()
    aliases: dict[str, str] = {}  # local name -> halo module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "halo" and alias.name in MODULES:
                    edges.add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, node)
            if source.split(".")[0] != "halo":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    edges.add(sub)
                    aliases[alias.asname or alias.name] = sub
                else:
                    edges.add(source)
                    if _is_private(alias.name) and source != module:
                        private.add((source, alias.name))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _is_private(node.attr)
            and aliases[node.value.id] != module
        ):
            private.add((aliases[node.value.id], node.attr))
    edges.discard(module)
    return {e for e in edges if e in MODULES}, private


GRAPH: dict[str, set[str]] = {}
PRIVATE: dict[str, set[tuple[str, str]]] = {}
for _name, _path in MODULES.items():
    GRAPH[_name], PRIVATE[_name] = _scan(_name, _path)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_every_kind_of_import():
    # Guards the test itself: lazy, relative and `import x as y` imports are edges.
    assert "halo.geometry.sealing" in GRAPH["halo.grasp.metrics"]
    assert "halo.utils.atomic" in GRAPH["halo.data.layout"]
    assert "halo.grasp.synthesis" in GRAPH["halo.grasp.synthetic_grab"]
    lazy = [m for m, e in GRAPH.items() if "halo.hands.synthetic_hand" in e and m.startswith("halo.grasp")]
    assert lazy  # synthetic_grab imports the synthetic hand inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_subpackage_has_a_layer():
    packages = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS (and DESIGN.md)"


def test_no_import_cycles():
    cycles = [c for c in _cycles(GRAPH) if not set(c) <= ALLOWED_CYCLE_MODULES]
    assert not cycles, "import cycles in halo/: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = sorted(
        f"{module} uses {source}.{name}"
        for module, uses in PRIVATE.items()
        for source, name in uses
        if (module, source, name) not in ALLOWED_PRIVATE_IMPORTS
    )
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_layers_point_one_way():
    bad = []
    for module, targets in GRAPH.items():
        own = _layer(module)
        for target in targets:
            other = _layer(target)
            if own is None or other is None or other <= own:
                continue
            if (module, target) not in ALLOWED_LAYER_EDGES:
                bad.append(f"{module} (layer {own}) imports {target} (layer {other})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_allow_lists_hold_only_live_violations():
    # An entry that no longer violates anything must be deleted, so the lists only shrink.
    for module, target in ALLOWED_LAYER_EDGES:
        assert target in GRAPH.get(module, set()), f"stale allow-list entry {module} -> {target}"
    live_private = {(m, source, name) for m, uses in PRIVATE.items() for source, name in uses}
    assert ALLOWED_PRIVATE_IMPORTS <= live_private
    in_cycles = {m for c in _cycles(GRAPH) for m in c}
    assert ALLOWED_CYCLE_MODULES <= in_cycles
