"""Child process of the peak-memory measurement: verify one stream read-only and report memory.

    python verify_child.py STORE STREAM_ID

Opens the store with ``read_only=True``, iterates ``Storage.iter_records(stream, 0,
anchored=False)`` (every record verified from genesis) and prints one JSON object: records,
events, payload bytes, seconds, and the resident-set high-water mark in KiB before and after
the walk (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` where /proc is missing). It imports
nothing but hybridlog, so the baseline is the library's own.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from hybridlog import RecordKind, Storage


def high_water_kib() -> int:
    """This process's peak resident set size so far, in KiB."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main(argv: list[str]) -> int:
    store, stream_id = Path(argv[1]), int(argv[2])
    before = high_water_kib()
    records = events = payload_bytes = 0
    start = time.perf_counter()
    with Storage(store, read_only=True) as storage:
        for record in storage.iter_records(stream_id, 0, anchored=False):
            records += 1
            if record.kind is RecordKind.EVENT:
                events += 1
                payload_bytes += len(record.payload)
    seconds = time.perf_counter() - start
    report = {
        "records": records,
        "events": events,
        "payload_bytes": payload_bytes,
        "seconds": seconds,
        "hwm_kib_before": before,
        "hwm_kib": high_water_kib(),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
