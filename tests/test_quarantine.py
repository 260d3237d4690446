"""``hybridlog/quarantine.py`` is the only module that cuts, moves, renames or deletes data bytes.

The test reads every module of the package (``hybridlog/testing``, which damages files on
purpose, aside) and lists each call that can cut or move a file: ``.truncate(...)``,
``.unlink(...)``, ``.rmdir(...)``, a path's ``.rename(x)`` / ``.replace(x)`` (one positional
argument: ``str.replace`` takes two, ``datetime.replace`` keywords), ``os.remove`` / ``unlink`` /
``rename`` / ``replace`` / ``truncate`` / ``ftruncate`` / ``link`` / ``rmdir`` / ``removedirs``,
and anything from ``shutil``. Outside quarantine.py only the calls in ``ALLOWED`` may do that.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hybridlog"

CUTTING_METHODS = {"truncate", "unlink", "rmdir"}
RENAMING_METHODS = {"rename", "replace"}
CUTTING_OS = {"remove", "unlink", "rename", "replace", "truncate", "ftruncate", "link", "rmdir", "removedirs"}

# (module, enclosing function, call): each legitimately elsewhere, and why.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("segment", "write_file_durably", ".replace"): "the temp file of a durable write renamed to its name",
    ("segment", "SegmentWriter.truncate", "os.ftruncate"): "the primitive of the writer's undo below",
    ("segment", "SegmentWriter.trim", "os.ftruncate"): "zeros the writer reserved past its own data, given back",
    ("writer", "Writer._undo_writes", ".truncate"): "the append path undoing its own unacknowledged group",
    ("writer", "Writer._undo_writes", ".unlink"): "... and removing the segment file that group created",
    ("lock", "StoreLock.__init__", "os.ftruncate"): "the lock file holds the writer's pid, no data",
    ("lock", "StoreLock.release", "os.ftruncate"): "... and is emptied when the writer lets go",
    ("catalog", "Catalog.create", ".replace"): "a new, empty catalog put in place (below quarantine's layer)",
    ("catalog", "Catalog.build", ".unlink"): "the remains of a catalog build a crash interrupted",
    ("eventsourcing", "open_index_connection", ".unlink"): "an unusable eventsourcing.db: derived, read again",
    (
        "objects",
        "DirectoryObjects.put_new",
        "os.link",
    ): "an object created in a directory bucket (never a store's file)",
    ("objects", "DirectoryObjects.put_new", ".unlink"): "... and the temporary file it was linked from",
    ("objects", "DirectoryObjects.delete", ".unlink"): "an object deleted from a directory bucket, as asked",
    ("evicted", "_make_room", ".unlink"): "a fetched copy of an evicted segment leaves the bounded cache",
    ("evicted", "_write_copy", ".replace"): "a fetched, digest-checked copy put in the cache whole",
    ("evicted", "_write_copy", ".unlink"): "... or its temporary file, when writing it failed",
    ("evicted", "evict_file", ".unlink"): "a sealed segment whose object read back whole, after its durable stub",
    ("fence", "unfence_store", ".unlink"): "the fence file, removed when this store takes its streams back",
}


def cutting_calls(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function, call, line) of each file-cutting call in ``path``."""
    found: list[tuple[str, str, int]] = []
    scope: list[str] = []

    class Visitor(ast.NodeVisitor):
        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        def visit_Call(self, node: ast.Call) -> None:
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                name = func.attr
                if owner == "shutil" or (owner == "os" and name in CUTTING_OS):
                    found.append((".".join(scope), f"{owner}.{name}", node.lineno))
                elif owner != "os" and (
                    name in CUTTING_METHODS or (name in RENAMING_METHODS and len(node.args) == 1 and not node.keywords)
                ):
                    found.append((".".join(scope), f".{name}", node.lineno))
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module == "shutil" or (node.module == "os" and {a.name for a in node.names} & CUTTING_OS):
                found.append((".".join(scope), f"from {node.module} import", node.lineno))

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_only_quarantine_cuts_moves_or_deletes_files() -> None:
    elsewhere: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if module in ("quarantine", "testing"):
            continue
        elsewhere.extend(
            f"{path.relative_to(PACKAGE)}:{line}: {call} in {function or '<module>'}"
            for function, call, line in cutting_calls(path)
            if (module, function, call) not in ALLOWED
        )
    assert elsewhere == []


def test_every_allowed_call_is_still_there() -> None:
    """An entry of ``ALLOWED`` whose call has gone is removed, so the list stays exact."""
    seen = {
        (path.relative_to(PACKAGE).parts[0].removesuffix(".py"), function, call)
        for path in PACKAGE.rglob("*.py")
        for function, call, _ in cutting_calls(path)
    }
    assert sorted(set(ALLOWED) - seen) == []


def test_quarantine_does_cut() -> None:
    """The scan sees the calls it looks for (it would pass vacuously if it saw none)."""
    calls = {call for _, call, _ in cutting_calls(PACKAGE / "quarantine.py")}
    assert {".truncate", ".unlink", ".replace", "os.link", "shutil.copyfile"} <= calls
