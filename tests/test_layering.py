"""The package's shape (docs/architecture.md): every module is under 500 non-blank lines and sits in
one layer, imports at run time only from its own layer or below, and no runtime import cycle exists.

Imports under ``if TYPE_CHECKING:`` are not runtime imports and are not counted. A new module must
be given a layer here: the test fails for a module it does not know.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hybridlog"

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS: list[set[str]] = [
    {"errors", "output", "failpoints", "merkle", "ed25519", "note", "tree_head", "receipts"},
    {"types"},
    {"native", "record", "layout", "markers", "verified_cache", "groupcommit", "es_records", "manifest"},
    {"segment", "dictionary", "pipeline", "batch", "lock", "objects", "evicted", "fence"},
    {"walk", "db", "training", "catalog_rows"},
    {
        "scan",
        "catalog_check",
        "catalog_global",
        "catalog_batches",
        "catalog",
        "consumers",
        "index",
        "events_table",
        "records_table",
        "catalog_tree",
    },
    {"framing", "writer", "reads", "diagnose", "quarantine", "sql", "backend", "memory", "subscription"},
    {"recovery", "catalog_rebuild", "stream_repair", "repair", "maintenance", "opening", "tree", "remote"},
    {"storage", "verify", "signing", "tiering", "eviction"},
    {"cli", "eventsourcing", "__init__", "__main__"},
]
LAYER_OF = {module: number for number, modules in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    """``hybridlog/cli/admin.py`` -> ``cli``: a subpackage sits in one layer as a whole."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def runtime_imports(path: Path) -> set[str]:
    """The hybridlog modules ``path`` imports when it runs (not under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module and node.module.startswith("hybridlog."):
                found.add(node.module.split(".")[1])
            elif node.level == 0 and node.module == "hybridlog":
                found.add("__init__")

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.startswith("hybridlog."):
                    found.add(alias.name.split(".")[1])

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module == "testing":  # test support, not part of the library's layers
            continue
        graph.setdefault(module, set()).update(runtime_imports(path) - {module, "testing"})
    return graph


def test_every_module_has_a_layer() -> None:
    assert sorted(set(import_graph()) - set(LAYER_OF)) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{module} (layer {LAYER_OF[module]}) imports {target} (layer {LAYER_OF[target]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if module in LAYER_OF and target in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]
    ]
    assert upward == []


def test_there_is_no_runtime_import_cycle() -> None:
    graph = import_graph()
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            found = cycle_from(target, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, []))]
    assert cycles == []


MAX_MODULE_LINES = 500
"""Non-blank lines a module may have: each is read in one sitting (issue 11)."""


def test_every_module_is_readable_in_one_sitting() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: size for name, size in sizes.items() if size >= MAX_MODULE_LINES} == {}
