"""The commands that write: ``init`` (an empty store), ``append`` (events from stdin or files,
committed in batches however slowly they come) and ``demo`` (a small store, shown step by step)."""

from __future__ import annotations

import os
import select
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

from hybridlog.cli.exits import Interrupted
from hybridlog.cli.options import has_files, is_store, json_option, store_argument, stream_option
from hybridlog.cli.render import plural, print_json, render_rows
from hybridlog.errors import StorageError
from hybridlog.sql import query_catalog
from hybridlog.storage import Storage
from hybridlog.types import DEFAULT_CHECKPOINT_INTERVAL, MAX_EVENT_SIZE, CheckpointPolicy, CompressionKind
from hybridlog.verify import verify_store


@click.command()
@store_argument
@json_option
def init(store: Path, as_json: bool) -> None:
    """Create an empty store (directory and missing parents, catalog, lock file), durably.

    A store that exists is left as it is; a directory with other files in it is refused.
    """
    created = not is_store(store)
    if created:
        if has_files(store):
            raise click.ClickException(
                f"{store} has files in it and is not a hybridlog store: give a new or empty directory"
            )
        with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as storage:
            storage.ensure_created()
            storage.flush_indexes()
    if as_json:
        print_json({"store": str(store.absolute()), "created": created})
    elif created:
        click.echo(f"initialised {store}", err=True)
    else:
        click.echo(f"a store already exists at {store}; left as it is", err=True)


def _stdin_lines(flush_interval: float) -> Iterator[bytes | None]:
    """Lines of stdin without their line ending, and None whenever ``flush_interval`` seconds pass
    without input (so that slow, live input is committed while it trickles in).

    Reads the file descriptor directly (``select`` for the wait), so nothing is left blocked in a
    buffered read when the command ends. Standard input without a descriptor (a test harness's) is
    read line by line, without the wait.
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        for line in sys.stdin.buffer:
            yield line.rstrip(b"\r\n")
        return
    buffer = bytearray()
    searched = 0  # no line ending before this position of ``buffer``
    while True:
        ready, _, _ = select.select([fd], [], [], flush_interval)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            if buffer:
                yield bytes(buffer).rstrip(b"\r")
            return
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, searched))) != -1:
            yield bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
        del buffer[:start]
        searched = len(buffer)


class _Appending:
    """What an ``append`` command has committed so far, for the line it ends with, however it ends."""

    def __init__(self, stream_id: int, unit: str) -> None:
        self.stream_id = stream_id
        self.unit = unit  # "line" or "file"
        self.events = 0
        self.next_offset: int | None = None
        self.head: bytes | None = None

    def add(self, count: int, next_offset: int, head: bytes) -> None:
        self.events += count
        self.next_offset, self.head = next_offset, head

    def summary(self) -> str:
        if not self.events:
            return f"nothing was appended to stream {self.stream_id}"
        where = f"{self.unit}s 1-{self.events}" if self.events > 1 else f"{self.unit} 1"
        return (
            f"{plural(self.events, 'event')} ({where}) appended to stream {self.stream_id},"
            f" next offset {self.next_offset}"
        )


@click.command()
@store_argument
@stream_option
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option(
    "--flush-interval",
    type=click.FloatRange(0.001, 3600),
    default=1.0,
    show_default=True,
    help="Seconds: lines read from stdin are committed at least this often, however slowly they come.",
)
@click.option("--compress", is_flag=True, help="Store payloads zstd-compressed when that makes them smaller.")
@json_option
def append(
    store: Path,
    stream_id: int,
    files: tuple[Path, ...],
    batch_size: int,
    flush_interval: float,
    compress: bool,
    as_json: bool,
) -> None:
    """Append events: one per line of stdin, or one per FILE.

    Lines are committed in batches of --batch-size, and at least every --flush-interval seconds.
    However the command ends (end of input, an event too large, Ctrl-C), it says exactly which
    lines were committed. It writes no checkpoint of its own when it ends.
    """
    compression = CompressionKind.ZSTD if compress else CompressionKind.NONE
    # Checkpoints every 1,000 events, inside batches; none on close, so the numbers reported below
    # are the stream's head when the command exits, and one-line appends add one record each.
    policy = CheckpointPolicy.every(DEFAULT_CHECKPOINT_INTERVAL, on_close=False)
    done = _Appending(stream_id, "file" if files else "line")
    events: Iterable[bytes | None] = (p.read_bytes() for p in files) if files else _stdin_lines(flush_interval)
    try:
        with Storage(store, compression=compression, checkpoint_policy=policy) as storage:
            batch: list[bytes] = []
            started = 0.0

            def commit() -> None:
                if batch:
                    done.add(len(batch), *storage.append(stream_id, batch))
                    batch.clear()

            for event in events:
                if event is None or (batch and time.monotonic() - started >= flush_interval):
                    commit()
                if event is None:
                    continue
                if len(event) > MAX_EVENT_SIZE:
                    commit()
                    number = done.events + 1
                    raise click.ClickException(
                        f"{done.unit} {number} is {len(event):,} bytes, more than an event may hold"
                        f" ({MAX_EVENT_SIZE:,}); {done.summary()}; nothing from {done.unit} {number} on"
                    )
                if not batch:
                    started = time.monotonic()
                batch.append(event)
                if len(batch) == batch_size:
                    commit()
            commit()
            if done.next_offset is None:
                done.next_offset, done.head = storage.next_offset(stream_id), storage.latest_chain_hash(stream_id)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {done.summary()}; the lines read after them were not") from None
    result = {
        "stream_id": stream_id,
        "appended": done.events,
        "next_offset": done.next_offset,
        "head": done.head.hex() if done.head else None,
    }
    if as_json:
        print_json(result)
    else:
        click.echo(f"appended {plural(done.events, 'event')} to stream {stream_id}; next offset {done.next_offset}")


DEMO_STREAM = 7


@click.command()
@click.argument("store", required=False, type=click.Path(file_okay=False, path_type=Path))
@json_option
def demo(store: Path | None, as_json: bool) -> None:
    """Append, read, verify and query a small store, showing each step (--json: the numbers only)."""
    target = store or Path(tempfile.mkdtemp(prefix="hybridlog-demo-")) / "store"
    say = (lambda _text: None) if as_json else click.echo
    say(f"# a store at {target}")
    try:
        with Storage(target, checkpoint_policy=CheckpointPolicy.every(4), max_segment_size=4096) as storage:
            # Appended at the stream's head, whatever it is: running the demo again adds 40 more.
            start = storage.next_offset(DEMO_STREAM)
            offset, head = storage.append(DEMO_STREAM, [b'{"type": "opened", "account": 42}'])
            for i in range(1, 40):
                event = f'{{"type": "deposit", "account": 42, "amount": {i * 10}}}'.encode()
                offset, head = storage.append(DEMO_STREAM, [event])
            checkpoints = offset - start - 40
            say(
                f"# appended 40 events to stream {DEMO_STREAM}, and {checkpoints} checkpoint records (one after"
                f" every 4 events; a checkpoint takes an offset too): next offset {offset}, head {head.hex()[:16]}..."
            )
            say(f"# read 3 events from offset {start + 10} (verified from the nearest checkpoint):")
            for payload in storage.read_from(DEMO_STREAM, start + 10, 200)[:3]:
                say(f"  {payload.decode()}")
            segments, sealed = storage.segment_count(DEMO_STREAM), len(storage.completed_segments(DEMO_STREAM))
            say(f"# segments: {segments}, sealed: {sealed}")
        with Storage(target, read_only=True) as storage:
            report = verify_store(storage)
        if as_json:
            print_json(
                {
                    "store": str(target.absolute()),
                    "stream_id": DEMO_STREAM,
                    "appended": 40,
                    "checkpoints": checkpoints,
                    "next_offset": offset,
                    "head": head.hex(),
                    "segments": segments,
                    "sealed_segments": sealed,
                    "ok": report.ok,
                    "records_verified": report.records,
                }
            )
            return
        say(f"# verify from genesis: {'ok' if report.ok else 'DAMAGED'}, {report.records} records")
        say("# the catalog, with SQL:")
        render_rows(
            query_catalog(
                target,
                "SELECT s.stream_id, s.record_count, s.event_count, s.checkpoint_count,"
                " (SELECT count(*) FROM segments g WHERE g.stream_id = s.stream_id) AS segments,"
                " hex(substr(s.chain_head, 1, 8)) AS head_prefix FROM streams s",
            ),
            "table",
        )
    except StorageError as e:
        raise click.ClickException(str(e)) from e
