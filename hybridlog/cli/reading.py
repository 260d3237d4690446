"""The commands that read: ``read`` (one stream, verified, optionally within a time window),
``tail`` (events as they are committed, in global order, for a consumer) and ``sql`` (one read-only
query over the catalog and the events)."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from hybridlog.batch import window_records
from hybridlog.cli.exits import Interrupted
from hybridlog.cli.options import open_existing, store_argument, stream_option
from hybridlog.cli.render import OUTPUT_FORMATS, print_payload, record_json, write_rows
from hybridlog.types import RecordKind

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS_FRACTION = re.compile(r"(\d\d:\d\d:\d\d)[.,](\d+)")


def iso_to_ns(text: str) -> int:
    """An ISO 8601 date or date-time as nanoseconds since the epoch; ValueError if it is not one.

    Without a UTC offset it is taken as UTC. Up to nine fractional digits are kept exactly
    (``datetime`` alone would drop everything past microseconds).
    """
    nanos = 0
    fraction = _SECONDS_FRACTION.search(text)
    if fraction is not None:
        digits = fraction.group(2)
        if len(digits) > 9:
            raise ValueError("more than 9 fractional digits (nanoseconds are the finest)")
        nanos = int(digits.ljust(9, "0"))
        text = text[: fraction.start()] + fraction.group(1) + text[fraction.end() :]
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1) * 1_000_000_000 + nanos


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return iso_to_ns(value)
    except ValueError as e:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time, such as 2024-05-01T12:00:00Z ({e})"
        ) from e


@click.command()
@store_argument
@stream_option
@click.option("--from", "from_offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--since", "since_ns", callback=_time_option, help="Only records appended at or after this time.")
@click.option("--until", "until_ns", callback=_time_option, help="Only records appended before this time.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many lines.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object, one per line (JSON Lines).")
@click.option("--records", is_flag=True, help="Print every record (checkpoints and repair markers too) as JSON Lines.")
def read(
    store: Path,
    stream_id: int,
    from_offset: int,
    since_ns: int | None,
    until_ns: int | None,
    limit: int | None,
    as_json: bool,
    records: bool,
) -> None:
    """Print events (verified from the nearest checkpoint), one per line: as text, or with --json
    as JSON Lines with their stream, offset, kind, time and hashes.

    A payload prints as its text when it is valid UTF-8, else as {"$base64": true, "encoded": ...}.
    --since and --until take ISO 8601 times (2024-05-01, 2024-05-01T12:00:00.5+02:00); a time
    without a UTC offset is UTC. --since is inclusive, --until exclusive.
    """
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    with open_existing(store, read_only=True) as storage:
        shown = 0
        # the window's bounds are checked against the records' own timestamps as they are read
        for record in window_records(storage, stream_id, since_ns, until_ns, from_offset):
            if not records and record.kind is not RecordKind.EVENT:
                continue
            if records or as_json:
                sys.stdout.write(record_json(record) + "\n")
            else:
                print_payload(record.payload)
            shown += 1
            if limit is not None and shown >= limit:
                break
        sys.stdout.flush()


@click.command()
@store_argument
@click.option(
    "--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=None, help="Only this stream (default: all)."
)
@click.option(
    "--from-offset",
    "--from",
    "from_offset",
    type=click.IntRange(0),
    default=None,
    help="Start at this offset of --stream.",
)
@click.option("--from-position", type=click.IntRange(0), default=None, help="Start at this global position.")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start at the first record (of --stream, or of the store); the same as --from-position 1.",
)
@click.option(
    "--consumer",
    default=None,
    help="Resume after this consumer's acknowledged position, and acknowledge each record once printed.",
)
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after printing this many lines.")
@click.option(
    "-e",
    "--exit-when-caught-up",
    "caught_up",
    is_flag=True,
    help="Exit (0) once everything committed so far is printed, instead of waiting for more.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print each event as JSON Lines, with its stream, offset and position."
)
@click.option("--records", is_flag=True, help="Print every record (checkpoints and repair markers too) as JSON Lines.")
@click.option("--poll", type=click.FloatRange(0.001), default=0.05, show_default=True, help="Seconds between polls.")
def tail(
    store: Path,
    stream_id: int | None,
    from_offset: int | None,
    from_position: int | None,
    from_beginning: bool,
    consumer: str | None,
    count: int | None,
    caught_up: bool,
    as_json: bool,
    records: bool,
    poll: float,
) -> None:
    """Print events as they are committed, in global order (Ctrl-C to stop).

    Starts at --from-offset / --from-position / --from-beginning; else after --consumer's
    acknowledged position (a new consumer starts at the beginning); else at the current end. With
    --consumer and a --from option, the consumer is moved to where the output starts, even
    backwards. Payloads print as in `read`.
    """
    starts = [
        name
        for name, given in (
            ("--from-offset", from_offset is not None),
            ("--from-position", from_position is not None),
            ("--from-beginning", from_beginning),
        )
        if given
    ]
    if len(starts) > 1:
        raise click.UsageError(f"give {' or '.join(starts)}, not both" if len(starts) == 2 else "give one start option")
    if from_offset is not None and stream_id is None:
        raise click.UsageError("--from-offset needs --stream")
    if from_beginning:
        from_position = 1
    with open_existing(store, read_only=True) as storage:
        if from_offset is None and from_position is None and consumer is None:
            from_position = storage.last_global_position() + 1
        subscription = storage.subscribe(
            stream_id,
            from_offset=from_offset,
            from_position=from_position,
            consumer=consumer,
            poll_interval=poll,
            max_interval=max(poll, 1.0),
            stop_when_caught_up=caught_up,
        )
        force = from_offset is not None or from_position is not None  # the first ack may move it back
        shown = 0
        for item in subscription:
            record = item.record
            printed = records or record.kind is RecordKind.EVENT
            if printed:
                if records or as_json:
                    sys.stdout.write(record_json(record, item.global_position) + "\n")
                else:
                    print_payload(record.payload)
                sys.stdout.flush()
            if consumer is not None:
                storage.ack(consumer, item.global_position, force=force)  # after it is printed
                force = False
            if printed:
                shown += 1
                if count is not None and shown >= count:
                    return


@click.command()
@store_argument
@click.argument("query")
@click.option("--table", "as_table", is_flag=True, help="Print an aligned text table (the default).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV, with a header row.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects, keys in column order.")
@click.option("--nl", "as_nl", is_flag=True, help="Print JSON Lines: one object per row.")
@click.option("--output", type=click.Choice(OUTPUT_FORMATS), default=None, help="The format by name (older spelling).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop the query after it has run this many seconds (exit 1). Default: no limit.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(0),
    default=None,
    help="Stop the query if it returns more than this many rows (exit 1). Default: no limit.",
)
def sql(
    store: Path,
    query: str,
    as_table: bool,
    as_csv: bool,
    as_json: bool,
    as_nl: bool,
    output: str | None,
    timeout: float | None,
    max_rows: int | None,
) -> None:
    """Run one read-only SQL statement, QUERY, over the catalog and the store's events (docs/sql.md).

    Tables: events (verified records), streams, segments, records, checkpoints, consumers. Rows
    are printed as the query finds them; a blob prints as its text when it is valid UTF-8, else
    as {"$base64": true, "encoded": ...}. Ctrl-C stops the query (exit 130).
    """
    flags = (as_table, as_csv, as_json, as_nl)
    chosen = {name for name, given in zip(OUTPUT_FORMATS, flags, strict=True) if given}
    chosen |= {output} if output else set()
    if len(chosen) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(chosen))}")
    output = chosen.pop() if chosen else "table"
    try:
        with (
            open_existing(store, read_only=True) as storage,
            storage.iter_sql(query, timeout=timeout, max_rows=max_rows) as rows,
        ):
            write_rows(rows.columns, rows, output)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the query was stopped") from None
