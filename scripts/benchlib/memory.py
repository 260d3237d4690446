"""Peak memory while verifying a store far larger than one segment, measured in a subprocess.

The store (one stream of 256-byte events, batches of 1000, default checkpoint policy) is written
until its segments hold at least ``target_bytes``; then ``verify_child.py`` opens it read-only in
a fresh Python process and walks ``iter_records(anchored=False)`` over the whole stream. The
figure is the child's resident-set high-water mark (VmHWM), cross-checked against
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in this process.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchlib.contenders import HYBRIDLOG, NONE, STREAM_ID, BenchError
from benchlib.measure import MB, Result, disk_bytes
from hybridlog import Storage
from hybridlog.record import FRAME_OVERHEAD
from hybridlog.types import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MAX_SEGMENT_SIZE

CHILD = Path(__file__).with_name("verify_child.py")
KIB = 1024


def _events_for(target_bytes: int, event_size: int) -> int:
    """Events whose frames (checkpoints included) add up to at least ``target_bytes``."""
    per_event = event_size + FRAME_OVERHEAD + (FRAME_OVERHEAD + 16) / DEFAULT_CHECKPOINT_INTERVAL
    return math.ceil(target_bytes / per_event / 1000) * 1000


def run_verify_memory(
    pool: Sequence[bytes], target_bytes: int, segment_size: int | None, tmp_root: Path | None
) -> Result:
    """Build the store, verify it in a child process, and report the child's peak RSS."""
    n_events = _events_for(target_bytes, len(pool[0]))
    max_segment = DEFAULT_MAX_SEGMENT_SIZE if segment_size is None else segment_size
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=tmp_root) as tmp:
        store = Path(tmp) / "store"
        batch = [pool[i % len(pool)] for i in range(1000)]
        with Storage(store, max_segment_size=max_segment) as writer:
            for _ in range(n_events // 1000):
                writer.append(STREAM_ID, batch, fsync=False)
            segments = writer.segment_count(STREAM_ID)
            segment_bytes = sum(s.size_bytes for s in writer.segments(STREAM_ID))
        if segment_bytes < target_bytes:
            raise BenchError(f"the store's segments hold {segment_bytes} bytes, wanted at least {target_bytes}")
        size = disk_bytes(store)
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(store), str(STREAM_ID)],
            capture_output=True,
            text=True,
            check=False,
        )
        children_max_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise BenchError(f"the verifying child failed ({proc.returncode}): {proc.stderr.strip()}")
    child = json.loads(proc.stdout)
    if child["events"] != n_events:
        raise BenchError(f"the verifying child read {child['events']} events, the store holds {n_events}")
    return {
        "workload": "verify_memory",
        "contender": HYBRIDLOG,
        "compression": NONE,
        "event_size": len(pool[0]),
        "events": n_events,
        "records": child["records"],
        "segments": segments,
        "max_segment_size": max_segment,
        "segment_bytes": segment_bytes,
        "store_bytes": size,
        "seconds": child["seconds"],
        "events_per_s": n_events / child["seconds"],
        "baseline_rss_mb": child["hwm_kib_before"] * KIB / MB,
        "peak_rss_mb": child["hwm_kib"] * KIB / MB,
        "children_max_rss_mb": children_max_kib * KIB / MB,
    }
