"""The plain-PyTorch layers (``nn``, ``functional``, ``optim``) import one way, with no cycle.

DESIGN.md, "Layers": the maths never imports the layers that use it, and no chain of imports among
the package's modules comes back to where it started. The graph is read from the source with
``ast`` (nothing is imported), so it also sees imports inside functions and under
``if TYPE_CHECKING:``, which a cycle at import time would not reveal. That these packages never
import Lightning is checked at run time by ``test_plain_pytorch_layers_do_not_import_lightning``
in ``tests/test_cli_and_demo.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import lightning_dnn_tricks

PACKAGE = "lightning_dnn_tricks"
PACKAGE_DIR = Path(lightning_dnn_tricks.__file__).parent
LAYERS = ("nn", "functional", "optim")


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file (``__init__``: the package)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((package, *parts))] = path
    return names


def _resolve(target: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``target`` is or lies in (``None``: not the package's)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imported_modules(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source (absolute or relative).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, to ``a.b`` otherwise.
    The implicit imports of parent packages (``a`` and ``a.b`` for ``import a.b.c``) are not
    edges: every submodule would otherwise form a cycle with its package's ``__init__``.
    """
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")
                if not is_package:
                    base_parts = base_parts[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    edges = {_resolve(target, known) for target in targets}
    return {edge for edge in edges if edge is not None and edge != module}


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """The import graph among all modules of the package rooted at ``root``."""
    known = module_names(root, package)
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def find_cycle(graph: Mapping[str, set[str]], starts: Iterable[str]) -> list[str] | None:
    """A cycle reachable from ``starts``, as ``[m0, m1, ..., m0]``, or ``None``."""
    done: set[str] = set()
    for start in sorted(starts):
        if start in done:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        on_path = [start]
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                on_path.pop()
                done.add(node)
                continue
            nxt = pending.pop(0)
            if nxt in on_path:
                return [*on_path[on_path.index(nxt) :], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph.get(nxt, ()))))
                on_path.append(nxt)
    return None


def layer_modules(graph: Mapping[str, set[str]], package: str = PACKAGE) -> list[str]:
    """The modules of the plain-PyTorch layers."""
    prefixes = tuple(f"{package}.{layer}" for layer in LAYERS)
    return [m for m in graph if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))]


def test_plain_pytorch_layers_have_no_import_cycle() -> None:
    graph = import_graph(PACKAGE_DIR)
    starts = layer_modules(graph)
    assert {m.split(".")[1] for m in starts} == set(LAYERS)
    cycle = find_cycle(graph, starts)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_the_real_edges() -> None:
    graph = import_graph(PACKAGE_DIR)
    # functional applies the layers of nn (as apply_weight_align does); nn never imports functional
    assert f"{PACKAGE}.nn.bnsr" in graph[f"{PACKAGE}.functional.bnsr"]
    assert f"{PACKAGE}.nn.weight_align" in graph[f"{PACKAGE}.functional.weight_align"]
    nn_modules = [m for m in graph if m.startswith(f"{PACKAGE}.nn")]
    assert not {e for m in nn_modules for e in graph[m] if e.startswith(f"{PACKAGE}.functional")}


def test_cycle_detection_catches_function_level_and_relative_imports(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "nn").mkdir(parents=True)
    (root / "functional").mkdir()
    files = {
        "__init__.py": "",
        "nn/__init__.py": "from pkg.nn.layer import Layer\n",
        "nn/layer.py": "from ..functional.maths import f\n\nclass Layer: ...\n",
        "functional/__init__.py": "",
        "functional/maths.py": (
            "def f():\n    from pkg.nn import layer\n    return layer\n\n"
            "def g():\n    from . import other\n"
        ),
        "functional/other.py": "import pkg.functional.maths as m\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    graph = import_graph(root, "pkg")
    assert graph["pkg.nn.layer"] == {"pkg.functional.maths"}
    assert graph["pkg.functional.maths"] == {"pkg.nn.layer", "pkg.functional.other"}
    assert graph["pkg.functional.other"] == {"pkg.functional.maths"}
    cycle = find_cycle(graph, layer_modules(graph, "pkg"))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert len(cycle) == 3  # two modules importing each other


def test_no_cycle_in_a_one_way_tree(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "nn").mkdir(parents=True)
    (root / "functional").mkdir()
    (root / "__init__.py").write_text("")
    (root / "nn" / "__init__.py").write_text("from .layer import Layer\n")
    (root / "nn" / "layer.py").write_text("import torch\n\nclass Layer: ...\n")
    (root / "functional" / "__init__.py").write_text("from .apply import apply\n")
    (root / "functional" / "apply.py").write_text("from pkg.nn import Layer\n")
    graph = import_graph(root, "pkg")
    assert graph["pkg.functional.apply"] == {"pkg.nn"}
    assert find_cycle(graph, graph) is None
