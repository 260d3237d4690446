"""The tiering commands (docs/tiering.md): ``tier STORE`` (upload what is sealed) and
``tier status STORE``. The bucket comes from ``--url`` (or ``HYBRIDLOG_TIER_URL``): ``s3://bucket/
prefix``, configured by the standard ``AWS_*`` variables, or ``file:///path``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from hybridlog.cli.admin import progress_bar
from hybridlog.cli.options import json_option, open_existing, store_argument
from hybridlog.cli.proofs import key_option, verifier_keys, vkey_option
from hybridlog.cli.render import print_json
from hybridlog.eviction import evict
from hybridlog.note import parse_signer_key
from hybridlog.objects import open_objects
from hybridlog.tiering import Tiering, tier_status

url_option = click.option(
    "--url",
    envvar="HYBRIDLOG_TIER_URL",
    required=True,
    help="The bucket: s3://bucket/prefix (AWS_* variables configure it) or file:///path.",
)


class TierGroup(click.Group):
    """``tier STORE ...`` is ``tier upload STORE ...``; ``tier status STORE ...`` reports."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Read a first argument that is not a subcommand or an option as the store to upload."""
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["upload", *args]
        return super().parse_args(ctx, args)


@click.group(cls=TierGroup)
def tier() -> None:
    """Upload sealed segments to an object store under signed manifests (`tier STORE --url URL
    --key KEY`), or compare the store with it (`tier status`)."""


@tier.command("upload")
@store_argument
@url_option
@key_option("The key that signs the manifests (`hybridlog key generate`).")
@click.option("--epoch", type=click.IntRange(1), default=1, show_default=True, help="This writer's epoch.")
@json_option
def upload(store: Path, url: str, key_file: Path, epoch: int, as_json: bool) -> None:
    """Upload what is sealed and not in the bucket yet, then each stream's next manifest."""
    key = parse_signer_key(key_file.read_text(encoding="utf-8"))
    objects = open_objects(url)
    with open_existing(store, read_only=True) as storage:
        pending = sum(s.pending_bytes for s in tier_status(storage, objects, [key.verifier]))
        with progress_bar("uploading", pending) as advance:
            reports = Tiering(storage, objects, key, epoch=epoch).upload(progress=advance)
    if as_json:
        print_json([dataclasses.asdict(r) for r in reports])
        return
    for r in reports:
        click.echo(
            f"stream {r.stream_id}: manifest {r.manifest}, {r.segments} segments added,"
            f" {r.uploaded_bytes} bytes uploaded"
        )


@tier.command("status")
@store_argument
@url_option
@vkey_option
@json_option
def status(store: Path, url: str, vkeys: tuple[str, ...], as_json: bool) -> None:
    """Each stream's sealed segments against the bucket's last manifest (its signature checked
    with --vkey)."""
    if not vkeys:
        raise click.UsageError("give the manifests' verifier key with --vkey")
    objects = open_objects(url)
    with open_existing(store, read_only=True) as storage:
        found = tier_status(storage, objects, verifier_keys(vkeys))
    if as_json:
        print_json([dataclasses.asdict(s) for s in found])
        return
    for s in found:
        where = "no manifest yet" if s.manifest is None else f"manifest {s.manifest} (epoch {s.epoch})"
        click.echo(
            f"stream {s.stream_id}: bucket holds offsets below {s.bucket_head}, {where}; sealed locally below"
            f" {s.sealed_head}; {s.pending_segments} segments ({s.pending_bytes} bytes) to upload"
        )


@tier.command("evict")
@store_argument
@url_option
@vkey_option
@click.option("--keep-bytes", type=click.IntRange(0), help="Keep each stream's newest segments up to this many bytes.")
@click.option("--keep-age", type=click.FloatRange(0), help="Keep segments written less than this many seconds ago.")
@json_option
def evict_command(
    store: Path, url: str, vkeys: tuple[str, ...], keep_bytes: int | None, keep_age: float | None, as_json: bool
) -> None:
    """Remove from the local disk sealed segments past the retention that the bucket holds whole
    under its last signed manifest (checked with --vkey); reads fetch them back."""
    if not vkeys:
        raise click.UsageError("give the manifests' verifier key with --vkey")
    if keep_bytes is None and keep_age is None:
        raise click.UsageError("say what to keep locally: --keep-bytes, --keep-age or both")
    objects = open_objects(url)
    with open_existing(store, read_only=True) as storage:
        reports = evict(storage, objects, verifier_keys(vkeys), keep_bytes=keep_bytes, keep_age_s=keep_age)
    if as_json:
        print_json([dataclasses.asdict(r) for r in reports])
        return
    for r in reports:
        kept = f"; {len(r.not_uploaded)} past the retention kept (not uploaded)" if r.not_uploaded else ""
        click.echo(f"stream {r.stream_id}: {len(r.evicted)} segments evicted ({r.evicted_bytes} bytes){kept}")


@tier.command("claim")
@store_argument
@url_option
@key_option("The key that signs the manifests (`hybridlog key generate`).")
@click.option("--epoch", type=click.IntRange(2), required=True, help="This writer's epoch: above the bucket's.")
@json_option
def claim(store: Path, url: str, key_file: Path, epoch: int, as_json: bool) -> None:
    """Take the store's streams over in the bucket before writing here: publish each stream's
    manifest at EPOCH, which fences writers of a lower epoch (their appends stop)."""
    key = parse_signer_key(key_file.read_text(encoding="utf-8"))
    with open_existing(store, read_only=True) as storage:
        reports = Tiering(storage, open_objects(url), key, epoch=epoch).claim()
    if as_json:
        print_json([dataclasses.asdict(r) for r in reports])
        return
    for r in reports:
        click.echo(f"stream {r.stream_id}: manifest {r.manifest} at epoch {epoch}")


@tier.command("retain")
@store_argument
@url_option
@key_option("The key that signs the manifests (`hybridlog key generate`).")
@click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), required=True, help="The stream.")
@click.option("--floor", type=click.IntRange(0), required=True, help="Remove the records below this offset.")
@click.option("--epoch", type=click.IntRange(1), default=1, show_default=True, help="This writer's epoch.")
@json_option
def retain(store: Path, url: str, key_file: Path, stream_id: int, floor: int, epoch: int, as_json: bool) -> None:
    """Remove a stream's whole segments below FLOOR from the bucket, under a signed manifest whose
    anchor keeps everything from there verifiable; the local store keeps its records."""
    key = parse_signer_key(key_file.read_text(encoding="utf-8"))
    with open_existing(store, read_only=True) as storage:
        report = Tiering(storage, open_objects(url), key, epoch=epoch).retain(stream_id, floor)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    click.echo(
        f"stream {report.stream_id}: manifest {report.manifest}, floor {report.floor};"
        f" {report.dropped_segments} segments dropped, {report.deleted_objects} objects deleted"
    )
