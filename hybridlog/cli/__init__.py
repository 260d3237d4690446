"""The ``hybridlog`` command: thin shells over the library.

Each command parses its arguments, calls one library function and renders the result as text or,
with ``--json``, as JSON on stdout. Diagnostics go to stderr. Exit codes, and the one place the
library's errors become them, are in ``exits.py``. The commands live one concern to a module:

    writing.py   init, append, demo
    reading.py   read, tail, sql
    admin.py     verify, check, repair, rebuild-index, checkpoint, stats, migrate
    proofs.py    key generate, sign, prove, receipt, verify-receipt (the Merkle tree, docs/proofs.md)
    tiering.py   tier (upload), tier status (an object store, docs/tiering.md)
    options.py   the STORE argument and options every command shares, and opening the store
    render.py    how results print: JSON, events, rows as a table, CSV, JSON or JSON Lines

This module defines the group and registers the commands on it.
"""

from __future__ import annotations

import logging

import click

from hybridlog.cli.admin import check, checkpoint, migrate, rebuild_index, repair, stats, verify
from hybridlog.cli.exits import (
    EXIT_BROKEN_PIPE,
    EXIT_DAMAGE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HybridlogGroup,
)
from hybridlog.cli.options import is_store
from hybridlog.cli.proofs import key, prove, receipt, sign, verify_receipt_command
from hybridlog.cli.reading import read, sql, tail
from hybridlog.cli.tiering import tier
from hybridlog.cli.writing import append, demo, init

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_DAMAGE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "cli",
    "is_store",
    "main",
]


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


# The commands, defined in their modules, join the group here (``hybridlog --help`` lists them by name).
for command in (init, append, demo, read, tail, sql, verify, check, repair, rebuild_index, checkpoint, stats, migrate):
    cli.add_command(command)
for command in (key, sign, prove, receipt, verify_receipt_command, tier):
    cli.add_command(command)


def main() -> None:
    """Entry point: run the CLI, mapping errors to the documented exit codes."""
    cli(prog_name="hybridlog")
