"""What every command shares on its way in: the STORE argument with ``--json`` and ``--stream``,
and opening the store it names (``is_store`` tells a store from any other directory)."""

from __future__ import annotations

from pathlib import Path

import click

from hybridlog.layout import CATALOG_FILE, LOCK_FILE, STREAMS_DIR
from hybridlog.storage import Storage
from hybridlog.types import CheckpointPolicy

store_argument = click.argument("store", envvar="HYBRIDLOG_STORE", type=click.Path(file_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
stream_option = click.option("--stream", "stream_id", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store: a directory holding ``catalog.db``, a ``streams/`` directory or
    ``LOCK``. A store whose catalog was deleted still is one (``hybridlog repair`` rebuilds it); an
    empty directory, a mistyped path or a directory of other files is not."""
    return path.is_dir() and (
        (path / CATALOG_FILE).exists() or (path / STREAMS_DIR).is_dir() or (path / LOCK_FILE).exists()
    )


def has_files(path: Path) -> bool:
    """Whether ``path`` is a directory with something in it."""
    return path.is_dir() and any(path.iterdir())


def open_existing(store: Path, *, read_only: bool) -> Storage:
    """A store that must already exist. Admin commands write no checkpoints of their own on close."""
    if not is_store(store):
        if has_files(store):
            raise click.ClickException(
                f"{store} is not a hybridlog store (no {CATALOG_FILE}, {STREAMS_DIR}/ or {LOCK_FILE} in it):"
                " check the path, or create a store in a new or empty directory with `hybridlog init`"
            )
        raise click.ClickException(f"no store at {store} (create one with `hybridlog init {store}`)")
    return Storage(store, read_only=read_only, checkpoint_policy=CheckpointPolicy.explicit())
