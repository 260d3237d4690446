"""Eviction of uploaded sealed segments, and reads that fetch them back (``hybridlog/eviction.py``,
``hybridlog/evicted.py``), against a real S3 server (SeaweedFS).

Contracts tested here:

* Only a sealed segment that the bucket's last signed manifest names, and whose object reads back
  whole, leaves the disk; the active segment and segments not uploaded stay, whatever the bounds.
* A store with evicted segments reads, verifies, answers SQL, reopens (recovery finds nothing to
  do) and rebuilds its catalog exactly as before eviction; fetched copies stay within the cache's
  bound.
* A changed object in the bucket is named when a read reaches it (stream and segment), and nothing
  local changes; a damaged object is never the reason a segment leaves the disk.
* An evictor SIGKILLed between writing a stub and removing the file leaves a store that reads
  the same, and the next eviction finishes the job.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridlog import CompressionKind, Storage, failpoints
from hybridlog.cli import cli
from hybridlog.errors import IntegrityError, InvalidArgument
from hybridlog.evicted import CACHE_BYTES_VARIABLE, CACHE_DIR, is_evicted, stub_path
from hybridlog.eviction import evict
from hybridlog.layout import segment_path
from hybridlog.note import SignerKey
from hybridlog.objects import ObjectStore, open_objects
from hybridlog.testing.harness import kill_self, run_until_killed
from hybridlog.tiering import Tiering, latest_manifest
from hybridlog.types import StreamId
from hybridlog.verify import verify_store

THIS_FILE = Path(__file__)


def fill(store: Storage, rng: random.Random, batches: int) -> None:
    for _ in range(batches):
        events = [f'{{"n": {rng.randrange(10**6)}, "pad": "{"x" * rng.randrange(200)}"}}' for _ in range(10)]
        store.append(rng.choice((1, 2)), [e.encode() for e in events])


def everything(store: Storage) -> dict[int, list[tuple[int, bytes, bytes]]]:
    return {
        sid: [(r.offset, r.payload, r.hash) for r in store.iter_records(sid, 0, anchored=False)]
        for sid in store.stream_ids()
    }


def keeps(store: Storage, before: dict[int, list[tuple[int, bytes, bytes]]]) -> bool:
    """Whether the store still reads ``before`` (closing a writer may have added a checkpoint after it)."""
    now = everything(store)
    return now.keys() == before.keys() and all(now[sid][: len(records)] == records for sid, records in before.items())


def segment_files(store_dir: Path, sid: int) -> list[Path]:
    return sorted((store_dir / "streams").glob(f"*{sid}/*.seg"))


def uploaded_store(store_dir: Path, url: str, signer: SignerKey, batches: int = 120) -> dict[int, list[int]]:
    """A store with sealed segments in the bucket; returns each stream's uploaded segment numbers."""
    with Storage(store_dir, max_segment_size=4096, compression=CompressionKind.ZSTD) as store:
        fill(store, random.Random(42), batches)
        Tiering(store, open_objects(url), signer).upload()
        objects = open_objects(url)
        found: dict[int, list[int]] = {}
        for sid in store.stream_ids():
            latest = latest_manifest(objects, sid, [signer.verifier])
            assert latest is not None
            found[sid] = [s.segment_no for s in latest[0].segments]
    return found


def test_eviction_takes_only_uploaded_sealed_segments_and_reads_fetch_them_back_verified(
    s3_url: str, store_dir: Path, signer: SignerKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploaded = uploaded_store(store_dir, s3_url, signer)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(7), 30)  # more sealed segments, these not uploaded
        before = everything(store)
        sql = "SELECT stream_id, offset, payload FROM events ORDER BY global_position"
        rows_before = store.sql(sql)
        numbers = {sid: [r.segment_no for r in store._writable_catalog().segments(StreamId(sid))] for sid in before}
        reports = evict(store, open_objects(s3_url), [signer.verifier], keep_bytes=0)
        for report in reports:
            sid = report.stream_id
            assert report.evicted == uploaded[sid]  # every uploaded one, nothing else
            assert report.not_uploaded == [n for n in numbers[sid][:-1] if n not in uploaded[sid]]
            assert not segment_path(store_dir, sid, numbers[sid][-1]).with_suffix(".evicted").exists()
            for no in numbers[sid]:
                assert is_evicted(segment_path(store_dir, sid, no)) == (no in uploaded[sid])
        monkeypatch.setenv(CACHE_BYTES_VARIABLE, "8192")  # two segments' worth
        assert everything(store) == before
        assert store.sql(sql) == rows_before
        for sid, records in before.items():
            for offset, payload, record_hash in records[::7]:
                point = store.read_records_verified(sid, offset, 1)[0]
                assert (point.offset, point.payload, point.hash) == (offset, payload, record_hash)
        cache = store_dir / CACHE_DIR
        assert sum(p.stat().st_size for p in cache.glob("*.seg")) <= 8192 + 4096
        assert verify_store(store).ok
        assert store.check().ok  # `hybridlog check`: files, catalog and tree agree
    with Storage(store_dir) as reopened:  # recovery: "uploaded, not local" is normal
        assert reopened.recovery_results() == []
        assert keeps(reopened, before)
        for sid in before:
            reopened.rebuild_index(sid)
        assert keeps(reopened, before)
        reopened.rebuild_catalog()
        assert keeps(reopened, before)
        fill(reopened, random.Random(8), 5)  # and the writer goes on
        assert verify_store(reopened).ok


def test_eviction_keeps_the_newest_bytes_and_young_segments(s3_url: str, store_dir: Path, signer: SignerKey) -> None:
    uploaded = uploaded_store(store_dir, s3_url, signer)
    with Storage(store_dir, max_segment_size=4096) as store:
        objects = open_objects(s3_url)
        assert all(r.evicted == [] for r in evict(store, objects, [signer.verifier], keep_age_s=3600))
        reports = evict(store, objects, [signer.verifier], keep_bytes=3 * 4096)
        for report in reports:
            kept = segment_files(store_dir, report.stream_id)
            assert sum(p.stat().st_size for p in kept) <= 3 * 4096
            assert len(kept) >= 2
            assert report.evicted == uploaded[report.stream_id][: len(report.evicted)]  # oldest first
        old = segment_path(store_dir, 1, uploaded[1][-1])
        os.utime(old, (0, 0))
        reports = evict(store, objects, [signer.verifier], keep_age_s=3600)
        assert reports[0].evicted == [uploaded[1][-1]]
        with pytest.raises(InvalidArgument):
            evict(store, objects, [signer.verifier])


def test_a_changed_object_is_named_when_read_and_never_the_reason_a_segment_leaves(
    s3_url: str, store_dir: Path, signer: SignerKey
) -> None:
    uploaded = uploaded_store(store_dir, s3_url, signer)
    objects = open_objects(s3_url)
    latest = latest_manifest(objects, 1, [signer.verifier])
    assert latest is not None
    first, second = latest[0].segments[0], latest[0].segments[1]
    flip(objects, first.key, 100)
    with Storage(store_dir) as store:
        reports = evict(store, objects, [signer.verifier], keep_bytes=0)
        assert first.segment_no in reports[0].not_uploaded  # the bucket's copy is damaged: kept
        assert reports[0].evicted == uploaded[1][1:]
        flip(objects, second.key, 50)
        stub = stub_path(segment_path(store_dir, 1, second.segment_no)).read_bytes()
        with pytest.raises(IntegrityError) as caught:
            list(store.iter_records(1, 0, anchored=False))
        assert caught.value.stream_id == 1
        assert caught.value.segment == segment_path(store_dir, 1, second.segment_no)
        assert stub_path(segment_path(store_dir, 1, second.segment_no)).read_bytes() == stub  # nothing local changed
        assert store.read_records_verified(1, 0, 1)  # the local first segment still reads


def flip(objects: ObjectStore, key: str, at: int) -> None:
    data = bytearray(objects.get(key))
    data[at] ^= 0x01
    objects.delete(key)
    assert objects.put_new(key, bytes(data))


def child_evict(store_dir: str, url: str, vkey: str, nth: str) -> None:
    count = 0

    def maybe_die() -> None:
        nonlocal count
        count += 1
        if count == int(nth):
            kill_self()

    failpoints.arm("stub-written", maybe_die)
    with Storage(store_dir, read_only=True) as store:
        evict(store, open_objects(url), [vkey], keep_bytes=0)
    print("finished without being killed", flush=True)


def test_an_evictor_killed_between_stub_and_unlink_leaves_a_store_that_reads_the_same(
    s3_url: str, store_dir: Path, signer: SignerKey
) -> None:
    uploaded_store(store_dir, s3_url, signer)
    with Storage(store_dir) as store:
        before = everything(store)
    for nth in (1, 3):
        run_until_killed(THIS_FILE, "evict", str(store_dir), s3_url, str(signer.verifier), str(nth), plan=None)
        with Storage(store_dir) as store:
            assert store.recovery_results() == []
            assert keeps(store, before)
    with Storage(store_dir) as store:
        evict(store, open_objects(s3_url), [signer.verifier], keep_bytes=0)
        assert not [p for p in (store_dir / "streams").rglob("*.evicted") if p.with_suffix(".seg").exists()]
        assert keeps(store, before)
        assert verify_store(store).ok


def test_the_evict_command(s3_url: str, store_dir: Path, signer: SignerKey) -> None:
    uploaded = uploaded_store(store_dir, s3_url, signer)
    result = CliRunner().invoke(
        cli,
        [
            "tier",
            "evict",
            str(store_dir),
            "--url",
            s3_url,
            "--vkey",
            str(signer.verifier),
            "--keep-bytes",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"evicted": ' in result.output
    for sid, numbers in uploaded.items():
        assert all(is_evicted(segment_path(store_dir, sid, no)) for no in numbers)


if __name__ == "__main__":
    if sys.argv[1] == "evict":
        child_evict(*sys.argv[2:])
