"""The README's eventsourcing walk-through, run as a user would: the bank application switched to
hybridlog by its environment, ``verify``, a changed byte caught by ``verify`` and by the
application, and the SQL query with the table the README shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hybridlog.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Use it with eventsourcing")
    return text[start : text.index("\n## ", start + 1)]


def block(kind: str, containing: str = "") -> str:
    blocks: list[str] = re.findall(rf"^```{kind}\n(.*?)^```$", section(), re.MULTILINE | re.DOTALL)
    return next(b for b in blocks if containing in b)


def run_app(workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PERSISTENCE_MODULE": "hybridlog.eventsourcing", "HYBRIDLOG_STORE": "./bank-store"}
    return subprocess.run(
        [sys.executable, "bank.py"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_readme_switch_verify_tamper_and_sql(tmp_path: Path) -> None:
    (tmp_path / "bank.py").write_text(block("python"), encoding="utf-8")
    switch = block("sh", "PERSISTENCE_MODULE")
    assert "export PERSISTENCE_MODULE=hybridlog.eventsourcing" in switch
    assert "export HYBRIDLOG_STORE=./bank-store" in switch
    first = run_app(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "Alice's balance: 35.50\n"
    store = tmp_path / "bank-store"
    runner = CliRunner()

    verified = runner.invoke(cli, ["verify", str(store)])
    assert verified.exit_code == 0
    shown = block("console", "ok: 4 records").splitlines()
    assert verified.output.splitlines()[-1] == shown[-1]
    assert verified.output.split(" head ")[0] == shown[1].split(" head ")[0]

    query_block = block("console", "hybridlog sql")
    command = query_block.splitlines()[0].removeprefix("$ ")
    args = shlex.split(command)[1:]
    assert args[1] == "./bank-store"
    queried = runner.invoke(cli, [args[0], str(store), *args[2:]])
    assert queried.exit_code == 0, queried.output
    assert queried.output.splitlines() == query_block.splitlines()[1:]

    segment = next(store.rglob("*.seg"))
    data = segment.read_bytes()
    at = data.index(b"25.50")
    segment.write_bytes(data[:at] + b"95" + data[at + 2 :])
    damaged = runner.invoke(cli, ["verify", str(store)])
    assert damaged.exit_code == 3
    shown = block("console", "DAMAGE FOUND").splitlines()
    assert "DAMAGED: record hash does not match its contents" in damaged.output
    assert ", offset 3, " in damaged.output
    assert damaged.output.splitlines()[-2:] == shown[2:4]
    refused = run_app(tmp_path)
    assert refused.returncode != 0
    assert "hybridlog.errors.HashMismatch: record hash does not match its contents" in refused.stderr
    assert ", offset 3, " in refused.stderr
