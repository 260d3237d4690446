"""The optional compiled helper: ``_speedups.c``, the C twins of the two hot loops of format 2.

``speedups`` is the loaded module, or None where it is not built or ``HYBRIDLOG_PURE=1`` is set.
Every caller keeps its Python loop and uses the C one only when it is here, and only for what it
handles (uncompressed format-2 frames); both produce the same bytes and the same records, and the
test suite runs once each way (``.ci/run``; ``tests/test_native.py`` compares them directly).

The module is compiled when the package is installed (``scripts/build_speedups.py``, a hatchling
build hook): a machine without a C compiler gets a working, slower, pure-Python hybridlog.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import blake3

from hybridlog.types import Record

PURE_ENV = "HYBRIDLOG_PURE"
"""Set to 1 to run without the compiled helper even where it is built."""


def _load() -> ModuleType | None:
    if os.environ.get(PURE_ENV) == "1":
        return None
    try:
        module = importlib.import_module("hybridlog._speedups")  # built at install, if it could be
    except ImportError:
        return None
    module.bind_record(Record)
    return module


def long_hash(header: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """The record hash of a record longer than one BLAKE3 chunk (the C code hashes shorter ones
    itself): ``header`` is the hashed header (flags 0), BLAKE3 of it and the payload."""
    hasher = blake3.blake3(header)
    return hasher.update(payload).digest()


speedups: ModuleType | None = _load()
