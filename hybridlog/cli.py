"""The ``hybridlog`` command: thin shells over the library.

Each command parses its arguments, calls one library function and renders the result as text or,
with ``--json``, as JSON on stdout. Diagnostics go to stderr. Exit codes (also in the README):

    0  success
    1  error (the message names the problem and, where there is one, the command that fixes it)
    2  usage error (bad arguments)
    3  verification found damage
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from hybridlog.errors import StorageError
from hybridlog.sql import QueryResult, SqlValue, query_catalog
from hybridlog.storage import Storage
from hybridlog.types import CheckpointPolicy, CompressionKind, RecordKind
from hybridlog.verify import VerifyReport, verify_store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DAMAGE = 3

F = TypeVar("F", bound=Callable[..., Any])

store_argument = click.argument("store", envvar="HYBRIDLOG_STORE", type=click.Path(file_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
stream_option = click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)


class DamageFound(click.ClickException):
    exit_code = EXIT_DAMAGE


def _fail_on_storage_errors(func: F) -> F:
    """Turn a StorageError into one clear line on stderr and exit code 1 (no traceback)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StorageError as e:
            raise click.ClickException(str(e)) from e

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _open_existing(store: Path, *, read_only: bool) -> Storage:
    if not store.is_dir():
        raise click.ClickException(f"no store at {store} (create one with `hybridlog init {store}`)")
    return Storage(store, read_only=read_only)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what the store does (recovery, rotation) to stderr.")
@click.version_option(package_name="hybridlog")
def cli(verbose: bool) -> None:
    """Tamper-evident, append-only event streams."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@cli.command()
@store_argument
@_fail_on_storage_errors
def init(store: Path) -> None:
    """Create an empty store (directory, catalog, lock file)."""
    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as storage:
        storage.flush_indexes()
    click.echo(f"initialised {store}", err=True)


def _read_lines(sources: tuple[Path, ...]) -> Iterator[bytes]:
    if not sources:
        for line in sys.stdin.buffer:
            yield line.rstrip(b"\r\n")
        return
    for source in sources:
        yield source.read_bytes()


@cli.command()
@store_argument
@stream_option
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--compress", is_flag=True, help="Store payloads zstd-compressed when that makes them smaller.")
@json_option
@_fail_on_storage_errors
def append(
    store: Path, stream_id: int, files: tuple[Path, ...], batch_size: int, compress: bool, as_json: bool
) -> None:
    """Append events: one per line of stdin, or one per FILE."""
    compression = CompressionKind.ZSTD if compress else CompressionKind.NONE
    appended = 0
    with Storage(store, compression=compression) as storage:
        batch: list[bytes] = []
        for event in _read_lines(files):
            batch.append(event)
            if len(batch) == batch_size:
                storage.append(stream_id, batch)
                appended, batch = appended + len(batch), []
        if batch:
            storage.append(stream_id, batch)
            appended += len(batch)
        head = storage.latest_chain_hash(stream_id)
        next_offset = storage.next_offset(stream_id)
    result = {
        "stream_id": stream_id,
        "appended": appended,
        "next_offset": next_offset,
        "head": head.hex() if head else None,
    }
    if as_json:
        _print_json(result)
    else:
        click.echo(f"appended {appended} events to stream {stream_id}; next offset {next_offset}")


@cli.command()
@store_argument
@stream_option
@click.option("--from", "from_offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many records.")
@click.option("--records", is_flag=True, help="Print each record's metadata as JSON Lines.")
@_fail_on_storage_errors
def read(store: Path, stream_id: int, from_offset: int, limit: int | None, records: bool) -> None:
    """Print events (verified from the nearest checkpoint), one per line."""
    with _open_existing(store, read_only=True) as storage:
        shown = 0
        for record in storage.iter_records(stream_id, from_offset):
            if not records and record.kind is not RecordKind.EVENT:
                continue
            if records:
                click.echo(
                    json.dumps(
                        {
                            "offset": record.offset,
                            "kind": record.kind.name.lower(),
                            "timestamp_ns": record.timestamp_ns,
                            "prev_hash": record.prev_hash.hex(),
                            "hash": record.hash.hex(),
                            "payload": record.payload.decode("utf-8", errors="backslashreplace"),
                        }
                    )
                )
            else:
                sys.stdout.buffer.write(record.payload + b"\n")
            shown += 1
            if limit is not None and shown >= limit:
                break
        sys.stdout.flush()


def _render_verify(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        _print_json(report.as_dict())
        return
    for verdict in report.streams:
        if verdict.ok:
            head = verdict.head.hex() if verdict.head else "-"
            click.echo(f"stream {verdict.stream_id}: ok, {verdict.records} records, head {head}")
        else:
            click.echo(f"stream {verdict.stream_id}: DAMAGED: {verdict.error}")
    click.echo(f"{'ok' if report.ok else 'DAMAGE FOUND'}: {report.records} records verified", err=not report.ok)


@cli.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@click.option("--from-checkpoints", is_flag=True, help="Verify from each stream's last checkpoint, not from genesis.")
@json_option
@_fail_on_storage_errors
def verify(store: Path, stream_ids: tuple[int, ...], from_checkpoints: bool, as_json: bool) -> None:
    """Verify every record's checksum, hash and chain link; exit 3 on damage."""
    with _open_existing(store, read_only=True) as storage:
        report = verify_store(storage, list(stream_ids) or None, from_genesis=not from_checkpoints)
    _render_verify(report, as_json)
    if not report.ok:
        raise DamageFound("verification found damage; see above")


def _render_rows(result: QueryResult, output: str) -> None:
    def cell(value: SqlValue) -> str | int | float | None:
        return value.hex() if isinstance(value, bytes) else value

    if output == "json":
        _print_json([{c: cell(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows])
    elif output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows([[cell(v) for v in row] for row in result.rows])
    else:
        table = [result.columns] + [["NULL" if v is None else str(cell(v)) for v in row] for row in result.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(result.columns))]
        for i, row in enumerate(table):
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                click.echo("  ".join("-" * w for w in widths))


@cli.command()
@store_argument
@click.argument("query")
@click.option("--output", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@_fail_on_storage_errors
def sql(store: Path, query: str, output: str) -> None:
    """Run a read-only SQL QUERY over the catalog (tables: streams, segments, records, checkpoints)."""
    _render_rows(query_catalog(store, query), output)


@cli.command()
@click.argument("store", required=False, type=click.Path(file_okay=False, path_type=Path))
def demo(store: Path | None) -> None:
    """Append, read, verify and query a small store, showing each step."""
    target = store or Path(tempfile.mkdtemp(prefix="hybridlog-demo-")) / "store"
    click.echo(f"# a store at {target}")
    try:
        with Storage(target, checkpoint_policy=CheckpointPolicy.every(4), max_segment_size=4096) as storage:
            offset, head = storage.append_batch(7, [b'{"type": "opened", "account": 42}'], 0, None)
            for i in range(1, 40):
                event = f'{{"type": "deposit", "account": 42, "amount": {i * 10}}}'.encode()
                offset, head = storage.append_batch(7, [event], offset, head)
            click.echo(f"# appended 40 events to stream 7: next offset {offset}, head {head.hex()[:16]}...")
            click.echo("# read 3 events from offset 10 (verified from the nearest checkpoint):")
            for payload in storage.read_from(7, 10, 200)[:3]:
                click.echo(f"  {payload.decode()}")
            click.echo(f"# segments: {storage.segment_count(7)}, sealed: {len(storage.completed_segments(7))}")
        with Storage(target, read_only=True) as storage:
            report = verify_store(storage)
        click.echo(f"# verify from genesis: {'ok' if report.ok else 'DAMAGED'}, {report.records} records")
        click.echo("# the catalog, with SQL:")
        _render_rows(
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


def main() -> None:
    """Entry point: run the CLI, mapping errors to the documented exit codes."""
    cli(prog_name="hybridlog")


if __name__ == "__main__":
    main()
