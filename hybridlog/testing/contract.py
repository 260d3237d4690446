"""The ``StorageBackend`` contract: the one home of the tests every backend must pass.

Subclass ``BackendContract`` in a test module (the class name must start with ``Test``) and give
it a ``harness`` fixture that hands out fresh backends of your kind::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def harness(self, tmp_path: Path) -> Iterator[Harness]:
            h = MyHarness(root=tmp_path)  # a hybridlog.testing.backends.Harness subclass
            yield h
            h.close_all()

``StorageHarness`` and ``MemoryHarness`` (``hybridlog.testing.backends``) are the shipped
backends' harnesses; a wrapper of ``Storage`` can subclass ``StorageHarness``. What one backend
does, every other must do too: the tests check through the contract, and through the harness's raw
backdoor (``records_after_close``, ``assert_untouched``) rather than through the backend alone.
Some tests use Hypothesis with the function-scoped ``harness`` fixture: suppress
``HealthCheck.function_scoped_fixture`` in your Hypothesis profile (each example makes its own
backends, so nothing leaks between examples), and ``HealthCheck.differing_executors`` when more
than one subclass runs in a session (as in hybridlog's own ``tests/test_contract.py``).

Needs pytest and Hypothesis (install the ``testing`` extra: ``pip install hybridlog[testing]``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hybridlog.testing.backends import Harness
from hybridlog.testing.contract_reads import ReadContract
from hybridlog.testing.contract_settings import SettingsContract
from hybridlog.testing.contract_writes import WriteContract


class BackendContract(WriteContract, ReadContract, SettingsContract):
    """Every contract test; a subclass overrides the ``harness`` fixture."""

    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        """The harness making the backends under test; a subclass must override it."""
        raise NotImplementedError("subclass BackendContract and override its harness fixture")
