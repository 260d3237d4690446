"""Shared fixtures and Hypothesis profiles.

Profiles: ``ci`` (the default; sized so the whole suite stays within a few minutes on 2 cores)
and ``heavy`` (many more examples). Pick one with ``HYPOTHESIS_PROFILE=heavy``. Tests marked
``slow`` (long crash loops and the like) run only with ``--run-slow``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from hybridlog.testing.clocks import make_clock

# The contract tests (hybridlog.testing.contract) take the function-scoped ``harness`` fixture (each
# example makes its own backends), and run once per backend subclass (differing executors).
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=SUPPRESSED,
)
settings.register_profile(
    "heavy",
    max_examples=1000,
    deadline=None,
    suppress_health_check=SUPPRESSED,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="heavy variant: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def clock() -> Callable[[], int]:
    return make_clock()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A path for a store that does not exist yet (Storage creates it on first write)."""
    return tmp_path / "store"
