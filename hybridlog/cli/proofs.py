"""The commands of the store's Merkle tree (docs/proofs.md): ``key generate``, ``sign``, ``prove``,
``receipt`` and ``verify-receipt`` (``verify --against`` is in admin.py). Hashes print as hex."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import click

from hybridlog.cli.options import json_option, open_existing, store_argument
from hybridlog.cli.render import print_json
from hybridlog.errors import ProofError
from hybridlog.note import VerifierKey, generate_key, note_text, open_note, parse_verifier_key
from hybridlog.receipts import verify_receipt
from hybridlog.tree import HeadSigner
from hybridlog.tree_head import TreeHead, decode_leaf, parse_tree_head

FC = TypeVar("FC", bound=Callable[..., object])

vkey_option = click.option(
    "--vkey",
    "vkeys",
    multiple=True,
    help="A verifier key (name+id+key), or a file holding one; repeat for several.",
)


def key_option(help_text: str) -> Callable[[FC], FC]:
    """``--key FILE``: a signer key file that must exist (``hybridlog key generate``)."""
    return click.option(
        "--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True, help=help_text
    )


def verifier_keys(values: tuple[str, ...]) -> list[VerifierKey]:
    """The keys ``--vkey`` gave: each the key's text, or the path of a file that holds it."""
    keys = []
    for value in values:
        text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
        keys.append(parse_verifier_key(text))
    return keys


def read_head(path: Path, vkeys: list[VerifierKey]) -> TreeHead:
    """The tree head in ``path``: a signed checkpoint, checked with ``vkeys`` when given (its text
    is taken as it is when none are), or a bare checkpoint text."""
    text = path.read_text(encoding="utf-8")
    if vkeys:
        return parse_tree_head(open_note(text, vkeys).text)
    try:
        return parse_tree_head(note_text(text))
    except ProofError:
        return parse_tree_head(text)


@click.group()
def key() -> None:
    """Signing keys for tree heads (Go's signed-note key formats)."""


@key.command("generate")
@click.argument("origin")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the key."
)
def key_generate(origin: str, out: Path) -> None:
    """Make an Ed25519 key named ORIGIN; write the private key to --out (never overwritten, mode
    0600; its directory made, mode 0700, if missing) and print the verifier key. Keep the key
    outside the store."""
    skey, vkey = generate_key(origin)
    try:
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; a key file is never overwritten") from None
    except OSError as e:
        raise click.ClickException(f"cannot write the key to {out}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(skey + "\n")
        f.flush()
        os.fsync(f.fileno())
    click.echo(vkey)


@click.command()
@store_argument
@key_option("The signing key (`hybridlog key generate`).")
@click.option("--origin", default=None, help="The log's name in the head (default: the key's name).")
def sign(store: Path, key_file: Path, origin: str | None) -> None:
    """Sign the store's tree head now and print it (a C2SP checkpoint). Refused (exit 3) unless it
    extends the last head this key signed (kept beside the key file, as KEY.last-head)."""
    with open_existing(store, read_only=False) as storage:
        click.echo(storage.tree.sign(HeadSigner(key_file, origin=origin)), nl=False)


@click.command()
@store_argument
@click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), help="Inclusion: the record's stream.")
@click.option("--offset", type=click.IntRange(0), help="Inclusion: the record's offset.")
@click.option("--old-size", type=click.IntRange(1), help="Consistency: the older tree's size.")
@click.option("--size", type=click.IntRange(0), help="The tree's size to prove in (default: the whole tree).")
def prove(store: Path, stream_id: int | None, offset: int | None, old_size: int | None, size: int | None) -> None:
    """Print, as JSON, the inclusion proof of one record (--stream and --offset) or the consistency
    proof from an older tree (--old-size)."""
    inclusion = stream_id is not None or offset is not None
    if inclusion == (old_size is not None) or (inclusion and (stream_id is None or offset is None)):
        raise click.UsageError("give either --stream and --offset (inclusion) or --old-size (consistency)")
    with open_existing(store, read_only=True) as storage:
        if stream_id is not None and offset is not None:
            found = storage.prove_inclusion(stream_id, offset, size)
            leaf = decode_leaf(found.entry)
            print_json(
                {
                    "proof": "inclusion",
                    "stream_id": found.stream_id,
                    "offset": found.offset,
                    "leaf_index": found.index,
                    "tree_size": found.size,
                    "leaf_entry": found.entry.hex(),
                    "record_hash": leaf.record_hash.hex(),
                    "kind": leaf.kind,
                    "timestamp_ns": leaf.timestamp_ns,
                    "hashes": [h.hex() for h in found.proof],
                    "root": found.root.hex(),
                }
            )
            return
        assert old_size is not None
        consistency = storage.prove_consistency(old_size, size)
        print_json(
            {
                "proof": "consistency",
                "old_size": consistency.old_size,
                "tree_size": consistency.size,
                "hashes": [h.hex() for h in consistency.proof],
                "old_root": consistency.old_root.hex(),
                "root": consistency.root.hex(),
            }
        )


@click.command()
@store_argument
@click.argument("stream_id", type=click.IntRange(0, 2**63 - 1))
@click.argument("offset", type=click.IntRange(0))
def receipt(store: Path, stream_id: int, offset: int) -> None:
    """Print a record's receipt (a C2SP tlog-proof: its leaf, its inclusion proof and the signed
    head that covers it) for `hybridlog verify-receipt` to check offline."""
    with open_existing(store, read_only=True) as storage:
        click.echo(storage.tree.receipt(stream_id, offset).text(), nl=False)


@click.command("verify-receipt")
@click.argument("receipt_file", type=click.File("r", encoding="utf-8"))
@vkey_option
@click.option("--origin", default=None, help="The log the head must be from.")
@click.option(
    "--store",
    "store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also check that this store still holds the tree the head signed.",
)
@json_option
def verify_receipt_command(
    receipt_file: IO[str], vkeys: tuple[str, ...], origin: str | None, store: Path | None, as_json: bool
) -> None:
    """Check a receipt (RECEIPT_FILE, - for stdin) offline: the head's signature by a --vkey, and
    the record's inclusion in that head's tree; exit 3 if it does not check out. No store needed."""
    if not vkeys:
        raise click.UsageError("give the signer's verifier key with --vkey")
    keys = verifier_keys(vkeys)
    text = receipt_file.read()
    if store is None:
        checked = verify_receipt(text, keys, origin=origin)
    else:
        with open_existing(store, read_only=True) as storage:
            checked = storage.tree.check_receipt(text, keys, origin=origin)
    leaf = decode_leaf(checked.entry)
    result = {
        "ok": True,
        "origin": checked.head.origin,
        "tree_size": checked.head.size,
        "root": checked.head.root.hex(),
        "signed_by": checked.signers,
        "leaf_index": checked.index,
        "global_position": checked.index + 1,
        "stream_id": leaf.stream_id,
        "offset": leaf.offset,
        "kind": leaf.kind,
        "timestamp_ns": leaf.timestamp_ns,
        "record_hash": leaf.record_hash.hex(),
    }
    if as_json:
        print_json(result)
        return
    click.echo(
        f"ok: stream {leaf.stream_id} offset {leaf.offset} (global position {checked.index + 1}, record hash"
        f" {leaf.record_hash.hex()}) is in {checked.head.origin}'s tree of {checked.head.size},"
        f" signed by {', '.join(checked.signers)}"
    )
