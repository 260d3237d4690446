"""The commands that look after a store: ``verify`` and ``check`` (report damage, exit 3),
``repair`` (show the plan, then apply it), ``rebuild-index``, ``checkpoint``, ``stats`` and
``migrate``; with the progress bar the long ones draw on a terminal."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import click

from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.cli.exits import DamageFound
from hybridlog.cli.options import json_option, open_existing, store_argument
from hybridlog.cli.proofs import read_head, verifier_keys, vkey_option
from hybridlog.cli.render import plural, print_json, render_rows
from hybridlog.errors import HeadNotExtended, RetainedBucket, StorageError
from hybridlog.objects import open_objects
from hybridlog.remote import verify_anchored
from hybridlog.repair import CheckReport, RepairStep
from hybridlog.sql import QueryResult
from hybridlog.storage import Storage
from hybridlog.verify import Disagreements, VerifyReport, verify_store


def _render_verify(report: VerifyReport, as_json: bool, extends: str | None = None) -> None:
    if as_json:
        print_json({**report.as_dict(), **({} if extends is None else {"against": extends})})
        return
    if extends is not None:
        click.echo(f"tree: {extends}")
    if report.error is not None:
        click.echo(f"store: DAMAGED: {report.error}")
    for verdict in report.streams:
        if verdict.ok:
            head = verdict.head.hex() if verdict.head else "-"
            isolated = ", ".join(str(f) if n == f + 1 else f"{f}..{n - 1}" for f, n in verdict.isolated)
            note = f" (offsets {isolated} isolated by repair)" if isolated else ""
            click.echo(f"stream {verdict.stream_id}: ok, {plural(verdict.records, 'record')}, head {head}{note}")
        elif verdict.error is not None:
            click.echo(f"stream {verdict.stream_id}: DAMAGED: {verdict.error}")
        _render_disagreements(verdict.catalog)
    _render_disagreements(report.catalog)
    click.echo(
        f"{'ok' if report.ok else 'DAMAGE FOUND'}: {plural(report.records, 'record')} verified", err=not report.ok
    )


def _verify_remote(
    url: str, wanted: list[int] | None, against: Path | None, vkeys: tuple[str, ...], as_json: bool
) -> None:
    if not vkeys:
        raise click.UsageError("give the manifests' verifier key with --vkey")
    seen = [] if against is None else [against.read_text(encoding="utf-8")]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="hybridlog-verify-") as cache,
            Storage.open_remote(url, vkey=verifier_keys(vkeys), cache_dir=cache, against=seen) as storage,
            progress_bar("verifying", _records_in(storage, wanted)) as advance,
        ):
            report = verify_store(storage, wanted, from_genesis=True, progress=advance)
    except RetainedBucket:  # raised before anything is fetched: verify each stream from its signed floor
        _verify_anchored(url, wanted, seen, vkeys, as_json)
        return
    _render_verify(report, as_json, None)
    if not report.ok:
        raise DamageFound("verification found damage; see above")


def _verify_anchored(
    url: str, wanted: list[int] | None, seen: list[str], vkeys: tuple[str, ...], as_json: bool
) -> None:
    """The remote verify of a bucket with retention: every stream from its manifest's signed floor
    (damage raises IntegrityError: exit 3)."""
    with tempfile.TemporaryDirectory(prefix="hybridlog-verify-") as cache:
        streams = verify_anchored(open_objects(url), verifier_keys(vkeys), Path(cache), seen, wanted)
    if as_json:
        print_json(
            {
                "records_verified": sum(s.records for s in streams),
                "streams": [
                    {
                        "stream_id": s.stream_id,
                        "ok": True,
                        "floor": s.floor,
                        "records": s.records,
                        "head": s.head_hash.hex(),
                    }
                    for s in streams
                ],
                "error": None,
            }
        )
        return
    for s in streams:
        click.echo(
            f"stream {s.stream_id}: ok, {plural(s.records, 'record')} from offset {s.floor} (the signed floor),"
            f" head {s.head_hash.hex()}"
        )
    click.echo(f"ok: {plural(sum(s.records for s in streams), 'record')} verified")


def _render_disagreements(found: Disagreements) -> None:
    for disagreement in found.listed:
        click.echo(f"CATALOG DISAGREES: {disagreement}")
    if found.count > len(found.listed):
        click.echo(f"CATALOG DISAGREES: ... and {found.count - len(found.listed)} more")


@click.command()
@click.argument("store", envvar="HYBRIDLOG_STORE")
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@click.option("--from-checkpoints", is_flag=True, help="Verify from each stream's last checkpoint, not from genesis.")
@click.option(
    "--against",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A signed tree head (checkpoint file): exit 3 unless the store's history extends it. For an"
    " object store, a signed manifest seen before: exit 3 unless the bucket still holds it.",
)
@vkey_option
@json_option
def verify(
    store: str,
    stream_ids: tuple[int, ...],
    from_checkpoints: bool,
    against: Path | None,
    vkeys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Verify every record's checksum, hash and chain link; exit 3 on damage. With --against, also
    check that the store's history extends a signed tree head (not cut back, rewritten or reordered).

    STORE may be an object store (s3://bucket/prefix or file:///path, docs/tiering.md): its
    manifests are checked with --vkey, its objects fetched into a temporary directory, and every
    stream verified from genesis to its manifest's head."""
    if urlparse(store).scheme in ("s3", "file"):
        _verify_remote(store, list(stream_ids) or None, against, vkeys, as_json)
        return
    head = None if against is None else read_head(against, verifier_keys(vkeys))
    with open_existing(Path(store), read_only=True) as storage:
        wanted = list(stream_ids) or None
        with progress_bar("verifying", _records_in(storage, wanted)) as advance:
            report = verify_store(storage, wanted, from_genesis=not from_checkpoints, progress=advance)
        extends: str | None = None
        if head is not None:
            try:
                size = storage.tree.check_against(head)
                extends = f"extends {head.origin}'s head of {plural(head.size, 'record')} (the store holds {size})"
            except HeadNotExtended as e:
                extends = f"DOES NOT EXTEND {head.origin}'s head of {plural(head.size, 'record')}: {e.message}"
    _render_verify(report, as_json, extends)
    if not report.ok or (extends is not None and extends.startswith("DOES NOT")):
        raise DamageFound("verification found damage; see above")


PROGRESS_INTERVAL_S = 0.1
"""How often a progress bar is redrawn at most: drawing it for every record costs more than the work."""


@contextlib.contextmanager
def progress_bar(
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


@click.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Only these streams.")
@json_option
def check(store: Path, stream_ids: tuple[int, ...], as_json: bool) -> None:
    """Report every disagreement and damage, changing nothing (dry run of repair); exit 3 if any."""
    with open_existing(store, read_only=True) as storage:
        wanted = list(stream_ids) or None
        with progress_bar("checking", _records_in(storage, wanted)) as advance:
            report = storage.check(wanted, progress=advance)
    if as_json:
        print_json(report.as_dict())
    else:
        _render_findings(report)
        if report.plan():
            click.echo("repair plan (`hybridlog repair` applies it):")
            _render_plan(report.plan())
        click.echo(
            f"{'ok' if report.ok else 'PROBLEMS FOUND'}: {plural(report.streams_checked, 'stream')}, "
            f"{plural(report.records_verified, 'record')} verified",
            err=not report.ok,
        )
    if not report.ok:
        raise DamageFound("the check found problems; `hybridlog repair` shows and applies the plan")


@click.command()
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
    with (
        open_existing(store, read_only=True) as reader,
        progress_bar("checking", _records_in(reader, wanted)) as advance,
    ):
        plan = reader.check(wanted, progress=advance).plan(wanted, truncate=truncate)
    if not as_json:
        if not plan:
            click.echo("nothing to repair")
        else:
            click.echo("repair plan:")
            _render_plan(plan)
    if dry_run or not plan:
        if as_json:
            print_json({"plan": [s.as_dict() for s in plan], "applied": []})
        if plan:  # like `check`: a plan means something needs repair
            raise DamageFound("the store needs repair; `hybridlog repair` without --dry-run applies the plan")
        return
    if not yes and not click.confirm("apply this plan?", err=True):
        raise click.ClickException("not applied")
    with open_existing(store, read_only=False) as storage:
        result = storage.repair(plan, stream_ids=wanted)
    if as_json:
        print_json({"plan": [s.as_dict() for s in plan], **result.as_dict()})
    else:
        for entry in result.entries:
            stream = "store" if entry.stream_id is None else f"stream {entry.stream_id}"
            kept = f", kept in {entry.kept_as}" if entry.kept_as else ""
            click.echo(f"{stream}: {entry.action} ({entry.found}){kept}")
        click.echo("repaired; the store checks clean" if result.after and result.after.ok else "repaired")
    if result.after is not None and not result.after.ok:
        raise DamageFound("problems remain after the repair; run `hybridlog check` for details")


@click.command("rebuild-index")
@store_argument
@click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=None, help="Only this stream.")
@json_option
def rebuild_index(store: Path, stream_id: int | None, as_json: bool) -> None:
    """Rebuild the catalog from the segments: one stream's rows, or the whole catalog (kept aside)."""
    with open_existing(store, read_only=False) as storage:
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
        print_json({"streams": summary})
    else:
        for item in summary:
            damage = f"; DAMAGE: {item['damage']}" if item["damage"] else ""
            click.echo(f"stream {item['stream_id']}: {plural(int(item['records'] or 0), 'record')} indexed{damage}")
    if any(item["damage"] for item in summary):
        raise DamageFound("some streams are damaged; `hybridlog repair` shows the plan")


@click.command()
@store_argument
@click.option("--stream", "stream_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="Default: every stream.")
@json_option
def checkpoint(store: Path, stream_ids: tuple[int, ...], as_json: bool) -> None:
    """Write a checkpoint record at the head of each stream."""
    done = []
    with open_existing(store, read_only=False) as storage:
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
        print_json({"checkpoints": done})
    else:
        for item in done:
            click.echo(f"stream {item['stream_id']}: checkpoint at offset {item['offset']}, hash {item['hash']}")


@click.command()
@store_argument
@json_option
def stats(store: Path, as_json: bool) -> None:
    """Streams, records, segments, sizes, compression ratio and checkpoints."""
    with open_existing(store, read_only=True) as storage:
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
        print_json({"streams": items, "totals": totals})
        return
    columns = list(items[0]) if items else ["stream_id", "records"]
    render_rows(QueryResult(columns, [tuple(i[c] for c in columns) for i in items]), "table")
    click.echo(
        f"{plural(len(items), 'stream')}, {plural(totals['events'], 'event')},"
        f" {plural(totals['stored_bytes'], 'byte')} in segments"
    )


@click.command()
@store_argument
@click.option("--check", "check_only", is_flag=True, help="Only report the schema versions; change nothing.")
@json_option
def migrate(store: Path, check_only: bool, as_json: bool) -> None:
    """Upgrade the catalog schema to this hybridlog's version (opening a store does it too)."""
    with open_existing(store, read_only=True) as storage:
        before = storage.schema_version()
    if not check_only and before < SCHEMA_VERSION:
        with Storage(store) as storage:
            after = storage.schema_version()
    else:
        after = before
    result = {"before": before, "after": after, "code_version": SCHEMA_VERSION}
    if as_json:
        print_json(result)
    elif check_only:
        state = "up to date" if before == SCHEMA_VERSION else f"{plural(SCHEMA_VERSION - before, 'migration')} pending"
        click.echo(f"schema version {before}; this hybridlog knows {SCHEMA_VERSION}: {state}")
    else:
        click.echo(f"schema version {before} -> {after}")
