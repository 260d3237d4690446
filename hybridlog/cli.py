"""The ``hybridlog`` command: thin shells over the library.

Each command parses its arguments, calls one library function and renders the result as text or,
with ``--json``, as JSON on stdout. Diagnostics go to stderr. Exit codes (also in the README):

    0  success
    1  error (the message names the problem and, where there is one, the command that fixes it)
    2  usage error (bad arguments)
    3  verification found damage (also ``repair --dry-run`` with a plan to apply)
  130  interrupted (Ctrl-C), one line on stderr
  141  stdout closed early by its reader (``| head``): the output stops quietly
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import os
import re
import select
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from hybridlog.batch import window_records
from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.errors import IntegrityError, StorageError, StorageLocked
from hybridlog.layout import CATALOG_FILE, LOCK_FILE, STREAMS_DIR
from hybridlog.output import json_value, text_value
from hybridlog.repair import CheckReport, RepairStep
from hybridlog.sql import QueryResult, SqlValue, query_catalog
from hybridlog.storage import Storage
from hybridlog.types import (
    DEFAULT_CHECKPOINT_INTERVAL,
    MAX_EVENT_SIZE,
    CheckpointPolicy,
    CompressionKind,
    Record,
    RecordKind,
)
from hybridlog.verify import Disagreements, VerifyReport, verify_store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DAMAGE = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool its reader stopped early

LOCKED_HINT = (
    "stop that process, or run this command once it has finished; read, tail, verify, check, stats and sql"
    " need no lock and work beside it"
)

store_argument = click.argument("store", envvar="HYBRIDLOG_STORE", type=click.Path(file_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
stream_option = click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)


class DamageFound(click.ClickException):
    """Verification or a check found damage: exit code 3."""

    exit_code = EXIT_DAMAGE


class HybridlogGroup(click.Group):
    """Maps the library's error tree to exit codes, in one place: one line on stderr, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IntegrityError as e:
            raise DamageFound(str(e)) from e
        except StorageLocked as e:  # the library's hint (read_only=True) means nothing on the command line
            raise click.ClickException(f"{e.message} (hint: {LOCKED_HINT})") from e
        except StorageError as e:
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:
            # The reader of stdout is gone (``| head``): nothing more to say to anyone.
            _stdout_to_devnull()
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from e
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except click.Abort as e:
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C at a prompt (click.confirm)
                click.echo(err=True)  # ends the prompt's line, so the error is a line of its own
                raise Interrupted("interrupted") from None
            raise


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at /dev/null, so that Python's flush of what is still buffered,
    at exit, does not fail again and print a traceback."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _plural(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _print_json(value: object) -> None:
    """One JSON object (keys in the order the command builds them: ``stream_id`` first)."""
    click.echo(json.dumps(value, indent=2))


def _print_payload(payload: bytes) -> None:
    """An event as one line of text: its UTF-8 text, or the ``$base64`` form (hybridlog/output.py)."""
    sys.stdout.write(text_value(payload) + "\n")


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store: a directory holding ``catalog.db``, a ``streams/`` directory or
    ``LOCK``. A store whose catalog was deleted still is one (``hybridlog repair`` rebuilds it); an
    empty directory, a mistyped path or a directory of other files is not."""
    return path.is_dir() and (
        (path / CATALOG_FILE).exists() or (path / STREAMS_DIR).is_dir() or (path / LOCK_FILE).exists()
    )


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _open_existing(store: Path, *, read_only: bool) -> Storage:
    """A store that must already exist. Admin commands write no checkpoints of their own on close."""
    if not is_store(store):
        if _has_files(store):
            raise click.ClickException(
                f"{store} is not a hybridlog store (no {CATALOG_FILE}, {STREAMS_DIR}/ or {LOCK_FILE} in it):"
                " check the path, or create a store in a new or empty directory with `hybridlog init`"
            )
        raise click.ClickException(f"no store at {store} (create one with `hybridlog init {store}`)")
    return Storage(store, read_only=read_only, checkpoint_policy=CheckpointPolicy.explicit())


@click.group(cls=HybridlogGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log what the store does (recovery, rotation) to stderr.")
@click.version_option(package_name="hybridlog")
def cli(verbose: bool) -> None:
    """Tamper-evident, append-only event streams."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        # Damage the library logs at ERROR is also raised when a command reaches it, and then it is
        # the one error line; logged as well, it would print twice.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.levelno < logging.ERROR or not record.name.startswith("hybridlog"))


@cli.command()
@store_argument
@json_option
def init(store: Path, as_json: bool) -> None:
    """Create an empty store (directory and missing parents, catalog, lock file), durably.

    A store that exists is left as it is; a directory with other files in it is refused.
    """
    created = not is_store(store)
    if created:
        if _has_files(store):
            raise click.ClickException(
                f"{store} has files in it and is not a hybridlog store: give a new or empty directory"
            )
        with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as storage:
            storage.ensure_created()
            storage.flush_indexes()
    if as_json:
        _print_json({"store": str(store.absolute()), "created": created})
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
            f"{_plural(self.events, 'event')} ({where}) appended to stream {self.stream_id},"
            f" next offset {self.next_offset}"
        )


@cli.command()
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
        _print_json(result)
    else:
        click.echo(f"appended {_plural(done.events, 'event')} to stream {stream_id}; next offset {done.next_offset}")


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


@cli.command()
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
    with _open_existing(store, read_only=True) as storage:
        shown = 0
        # the window's bounds are checked against the records' own timestamps as they are read
        for record in window_records(storage, stream_id, since_ns, until_ns, from_offset):
            if not records and record.kind is not RecordKind.EVENT:
                continue
            if records or as_json:
                sys.stdout.write(_record_json(record) + "\n")
            else:
                _print_payload(record.payload)
            shown += 1
            if limit is not None and shown >= limit:
                break
        sys.stdout.flush()


def _render_verify(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        _print_json(report.as_dict())
        return
    if report.error is not None:
        click.echo(f"store: DAMAGED: {report.error}")
    for verdict in report.streams:
        if verdict.ok:
            head = verdict.head.hex() if verdict.head else "-"
            isolated = ", ".join(str(f) if n == f + 1 else f"{f}..{n - 1}" for f, n in verdict.isolated)
            note = f" (offsets {isolated} isolated by repair)" if isolated else ""
            click.echo(f"stream {verdict.stream_id}: ok, {_plural(verdict.records, 'record')}, head {head}{note}")
        elif verdict.error is not None:
            click.echo(f"stream {verdict.stream_id}: DAMAGED: {verdict.error}")
        _render_disagreements(verdict.catalog)
    _render_disagreements(report.catalog)
    click.echo(
        f"{'ok' if report.ok else 'DAMAGE FOUND'}: {_plural(report.records, 'record')} verified", err=not report.ok
    )


def _render_disagreements(found: Disagreements) -> None:
    for disagreement in found.listed:
        click.echo(f"CATALOG DISAGREES: {disagreement}")
    if found.count > len(found.listed):
        click.echo(f"CATALOG DISAGREES: ... and {found.count - len(found.listed)} more")


@cli.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@click.option("--from-checkpoints", is_flag=True, help="Verify from each stream's last checkpoint, not from genesis.")
@json_option
def verify(store: Path, stream_ids: tuple[int, ...], from_checkpoints: bool, as_json: bool) -> None:
    """Verify every record's checksum, hash and chain link; exit 3 on damage."""
    with _open_existing(store, read_only=True) as storage:
        wanted = list(stream_ids) or None
        with _progress("verifying", _records_in(storage, wanted)) as advance:
            report = verify_store(storage, wanted, from_genesis=not from_checkpoints, progress=advance)
    _render_verify(report, as_json)
    if not report.ok:
        raise DamageFound("verification found damage; see above")


PROGRESS_INTERVAL_S = 0.1
"""How often a progress bar is redrawn at most: drawing it for every record costs more than the work."""


@contextlib.contextmanager
def _progress(
    label: str, total: int | None, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; silent when piped. The counts it is given
    are added up and drawn at most every ``PROGRESS_INTERVAL_S`` (and once at the end)."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with click.progressbar(length=total or 0, label=label, file=sys.stderr) as bar:
        pending, drawn_at = 0, clock()

        def advance(n: int) -> None:
            nonlocal pending, drawn_at
            pending += n
            now = clock()
            if now - drawn_at >= PROGRESS_INTERVAL_S:
                bar.update(pending)
                pending, drawn_at = 0, now

        yield advance
        if pending:
            bar.update(pending)


def _records_in(storage: Storage, stream_ids: list[int] | None) -> int | None:
    """How many records the catalog says there are (None if it cannot say: the command then finds out why)."""
    try:
        return sum(s.records for s in storage.stats() if stream_ids is None or s.stream_id in stream_ids)
    except StorageError:
        return None


def _render_findings(report: CheckReport) -> None:
    for f in report.findings:
        where = ", ".join(
            part
            for part in (
                f"offset {f.offset}" if f.offset is not None else "",
                f"segment {f.segment}" if f.segment else "",
                f"byte {f.position}" if f.position is not None else "",
            )
            if part
        )
        stream = "store" if f.stream_id is None else f"stream {f.stream_id}"
        fix = f" -> repair: {f.repair}" if f.repair else ""
        click.echo(f"{stream}: {f.problem}: {f.message}{f' at {where}' if where else ''}{fix}")


def _render_plan(plan: list[RepairStep]) -> None:
    for step in plan:
        target = "the whole store" if step.stream_id is None else f"stream {step.stream_id}"
        click.echo(f"  {step.repair} {target}  ({step.reason})")
        if step.effect:
            click.echo(f"    {step.effect}")


@cli.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@json_option
def check(store: Path, stream_ids: tuple[int, ...], as_json: bool) -> None:
    """Report every disagreement and damage, changing nothing (dry run of repair); exit 3 if any."""
    with _open_existing(store, read_only=True) as storage:
        wanted = list(stream_ids) or None
        with _progress("checking", _records_in(storage, wanted)) as advance:
            report = storage.check(wanted, progress=advance)
    if as_json:
        _print_json(report.as_dict())
    else:
        _render_findings(report)
        if report.plan():
            click.echo("repair plan (`hybridlog repair` applies it):")
            _render_plan(report.plan())
        click.echo(
            f"{'ok' if report.ok else 'PROBLEMS FOUND'}: {_plural(report.streams_checked, 'stream')}, "
            f"{_plural(report.records_verified, 'record')} verified",
            err=not report.ok,
        )
    if not report.ok:
        raise DamageFound("the check found problems; `hybridlog repair` shows and applies the plan")


@cli.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@click.option("--yes", is_flag=True, help="Apply the plan without asking.")
@click.option("--dry-run", is_flag=True, help="Show the plan only.")
@click.option(
    "--truncate",
    is_flag=True,
    help="Cut each damaged stream at its first damaged record, verifying records after it too "
    "(default: isolate the damage and keep every record that still verifies).",
)
@json_option
def repair(store: Path, stream_ids: tuple[int, ...], yes: bool, dry_run: bool, truncate: bool, as_json: bool) -> None:
    """Show the repair plan, then apply it.

    Damage is isolated in place, keeping every record that still verifies; only records that no
    longer verify are cut, into quarantine files. Each step says what it will do in records,
    offsets and bytes before you confirm.
    """
    wanted = list(stream_ids) or None
    # The plan comes from a read-only store: opening for writing runs open-time recovery, which
    # must not change anything before the operator has seen the plan and said yes.
    with _open_existing(store, read_only=True) as reader, _progress("checking", _records_in(reader, wanted)) as advance:
        plan = reader.check(wanted, progress=advance).plan(wanted, truncate=truncate)
    if not as_json:
        if not plan:
            click.echo("nothing to repair")
        else:
            click.echo("repair plan:")
            _render_plan(plan)
    if dry_run or not plan:
        if as_json:
            _print_json({"plan": [s.as_dict() for s in plan], "applied": []})
        if plan:  # like `check`: a plan means something needs repair
            raise DamageFound("the store needs repair; `hybridlog repair` without --dry-run applies the plan")
        return
    if not yes and not click.confirm("apply this plan?", err=True):
        raise click.ClickException("not applied")
    with _open_existing(store, read_only=False) as storage:
        result = storage.repair(plan, stream_ids=wanted)
    if as_json:
        _print_json({"plan": [s.as_dict() for s in plan], **result.as_dict()})
    else:
        for entry in result.entries:
            stream = "store" if entry.stream_id is None else f"stream {entry.stream_id}"
            kept = f", kept in {entry.kept_as}" if entry.kept_as else ""
            click.echo(f"{stream}: {entry.action} ({entry.found}){kept}")
        click.echo("repaired; the store checks clean" if result.after and result.after.ok else "repaired")
    if result.after is not None and not result.after.ok:
        raise DamageFound("problems remain after the repair; run `hybridlog check` for details")


@cli.command("rebuild-index")
@store_argument
@click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=None, help="Only this stream.")
@json_option
def rebuild_index(store: Path, stream_id: int | None, as_json: bool) -> None:
    """Rebuild the catalog from the segments: one stream's rows, or the whole catalog (kept aside)."""
    with _open_existing(store, read_only=False) as storage:
        if stream_id is None:
            results = storage.rebuild_catalog()
        else:
            storage.rebuild_index(stream_id)
            results = storage.recovery_results()[-1:]
        summary = [
            {
                "stream_id": r.stream_id,
                "records": storage.next_offset(r.stream_id),
                "damage": str(r.damage) if r.damage else None,
            }
            for r in results
        ]
    if as_json:
        _print_json({"streams": summary})
    else:
        for item in summary:
            damage = f"; DAMAGE: {item['damage']}" if item["damage"] else ""
            click.echo(f"stream {item['stream_id']}: {_plural(int(item['records'] or 0), 'record')} indexed{damage}")
    if any(item["damage"] for item in summary):
        raise DamageFound("some streams are damaged; `hybridlog repair` shows the plan")


@cli.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Default: every stream.")
@json_option
def checkpoint(store: Path, stream_ids: tuple[int, ...], as_json: bool) -> None:
    """Write a checkpoint record at the head of each stream."""
    done = []
    with _open_existing(store, read_only=False) as storage:
        unknown = sorted(set(stream_ids) - set(storage.stream_ids()))
        if unknown:  # a checkpoint goes at the head of a stream that exists; it never creates one
            raise click.ClickException(
                f"no stream {', '.join(map(str, unknown))} in {store}"
                f" (`hybridlog stats {store}` lists its streams); no checkpoint written"
            )
        for sid in stream_ids or storage.stream_ids():
            offset = storage.next_offset(sid)
            _next, digest = storage.create_checkpoint(sid, offset, storage.latest_chain_hash(sid), offset)
            done.append({"stream_id": sid, "offset": offset, "hash": digest.hex()})
    if as_json:
        _print_json({"checkpoints": done})
    else:
        for item in done:
            click.echo(f"stream {item['stream_id']}: checkpoint at offset {item['offset']}, hash {item['hash']}")


@cli.command()
@store_argument
@json_option
def stats(store: Path, as_json: bool) -> None:
    """Streams, records, segments, sizes, compression ratio and checkpoints."""
    with _open_existing(store, read_only=True) as storage:
        rows = storage.stats()
    items = [
        {
            "stream_id": r.stream_id,
            "records": r.records,
            "events": r.events,
            "checkpoints": r.checkpoints,
            "segments": r.segments,
            "sealed_segments": r.sealed_segments,
            "stored_bytes": r.stored_bytes,
            "payload_bytes": r.payload_bytes,
            "compression_ratio": None if r.compression_ratio is None else round(r.compression_ratio, 3),
        }
        for r in rows
    ]
    totals = {key: sum(int(i[key] or 0) for i in items) for key in ("records", "events", "stored_bytes", "segments")}
    if as_json:
        _print_json({"streams": items, "totals": totals})
        return
    columns = list(items[0]) if items else ["stream_id", "records"]
    _render_rows(QueryResult(columns, [tuple(i[c] for c in columns) for i in items]), "table")
    click.echo(
        f"{_plural(len(items), 'stream')}, {_plural(totals['events'], 'event')},"
        f" {_plural(totals['stored_bytes'], 'byte')} in segments"
    )


@cli.command()
@store_argument
@click.option("--check", "check_only", is_flag=True, help="Only report the schema versions; change nothing.")
@json_option
def migrate(store: Path, check_only: bool, as_json: bool) -> None:
    """Upgrade the catalog schema to this hybridlog's version (opening a store does it too)."""
    with _open_existing(store, read_only=True) as storage:
        before = storage.schema_version()
    if not check_only and before < SCHEMA_VERSION:
        with Storage(store) as storage:
            after = storage.schema_version()
    else:
        after = before
    result = {"before": before, "after": after, "code_version": SCHEMA_VERSION}
    if as_json:
        _print_json(result)
    elif check_only:
        state = "up to date" if before == SCHEMA_VERSION else f"{_plural(SCHEMA_VERSION - before, 'migration')} pending"
        click.echo(f"schema version {before}; this hybridlog knows {SCHEMA_VERSION}: {state}")
    else:
        click.echo(f"schema version {before} -> {after}")


def _record_json(record: Record, global_position: int | None = None) -> str:
    """One record as a line of JSON Lines (``read --json``, ``tail --json``, ``--records``), in the
    vocabulary every command's JSON uses; ``global_position`` where the command knows it (``tail``)."""
    fields: dict[str, object] = {"stream_id": record.stream_id, "offset": record.offset}
    if global_position is not None:
        fields["global_position"] = global_position
    fields |= {
        "kind": record.kind.name.lower(),
        "timestamp_ns": record.timestamp_ns,
        "prev_hash": record.prev_hash.hex(),
        "hash": record.hash.hex(),
        "payload": json_value(record.payload),
    }
    return json.dumps(fields)


@cli.command()
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
    with _open_existing(store, read_only=True) as storage:
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
                    sys.stdout.write(_record_json(record, item.global_position) + "\n")
                else:
                    _print_payload(record.payload)
                sys.stdout.flush()
            if consumer is not None:
                storage.ack(consumer, item.global_position, force=force)  # after it is printed
                force = False
            if printed:
                shown += 1
                if count is not None and shown >= count:
                    return


TABLE_WIDTH_ROWS = 1000  # a table's column widths come from its first rows; later wider values stick out


def _render_rows(result: QueryResult, output: str) -> None:
    _write_rows(result.columns, result.rows, output)


def _write_rows(columns: list[str], rows: Iterable[tuple[SqlValue, ...]], output: str) -> None:
    """Rows written as they come (one in memory at a time; a table keeps its first rows for the
    column widths), each flushed so that a slow query's rows show as soon as they are found.
    Objects keep the columns' order; blobs are text or ``$base64`` (hybridlog/output.py)."""
    out = sys.stdout

    def item(row: tuple[SqlValue, ...]) -> dict[str, object]:
        return {c: json_value(v) for c, v in zip(columns, row, strict=True)}

    if output == "json":  # the same text as one json.dumps(list, indent=2), written row by row
        separator = "[\n"
        for row in rows:
            out.write(separator + textwrap.indent(json.dumps(item(row), indent=2), "  "))
            out.flush()
            separator = ",\n"
        out.write("[]\n" if separator == "[\n" else "\n]\n")
    elif output == "nl":  # JSON Lines: one object per line
        for row in rows:
            out.write(json.dumps(item(row)) + "\n")
            out.flush()
    elif output == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([text_value(v) for v in row])
            out.flush()
    else:

        def text(row: tuple[SqlValue, ...]) -> list[str]:
            return [text_value(v, null="NULL") for v in row]

        rest = iter(rows)
        first = [text(row) for row in itertools.islice(rest, TABLE_WIDTH_ROWS)]
        widths = [max([len(c)] + [len(r[i]) for r in first]) for i, c in enumerate(columns)]

        def line(values: list[str]) -> None:
            out.write("  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip() + "\n")

        line(list(columns))
        line(["-" * w for w in widths])
        for values in first:
            line(values)
        out.flush()
        for row in rest:
            line(text(row))
            out.flush()
    out.flush()


class Interrupted(click.ClickException):
    """Ctrl-C stopped the command: exit code 130 (128 + SIGINT), one line on stderr."""

    exit_code = EXIT_INTERRUPTED


OUTPUT_FORMATS = ("table", "csv", "json", "nl")


@cli.command()
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
            _open_existing(store, read_only=True) as storage,
            storage.iter_sql(query, timeout=timeout, max_rows=max_rows) as rows,
        ):
            _write_rows(rows.columns, rows, output)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the query was stopped") from None


DEMO_STREAM = 7


@cli.command()
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
            _print_json(
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
