"""Following a stream as it grows: poll the catalog for newly committed records, with backoff.

Works in any process: a ``Storage`` opened with ``read_only=True`` sees each batch once the writer
has committed it, and never a record that was not committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from hybridlog.storage import Storage
from hybridlog.types import Record


def follow(
    storage: Storage,
    stream_id: int,
    from_offset: int = 0,
    *,
    poll_interval: float = 0.05,
    max_interval: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Record]:
    """Yield verified records from ``from_offset`` on, waiting for new ones as they are committed.

    When nothing new has arrived the wait doubles, from ``poll_interval`` up to ``max_interval``,
    and drops back as soon as a record arrives. Stops when ``should_stop()`` returns True.
    """
    next_offset = from_offset
    wait = poll_interval
    while not should_stop():
        got = False
        for record in storage.iter_records(stream_id, next_offset):
            yield record
            next_offset = record.offset + 1
            got = True
        wait = poll_interval if got else min(wait * 2, max_interval)
        if not got:
            sleep(wait)
