"""Running a test file as a child process and reading what it prints, shared by the process tests.

A child is the test file itself run with arguments (``spawn``); it answers one line at a time on
stdout (``read_line``). After a SIGKILL, ``drain_killed`` returns the whole lines it printed that
were not read yet.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

CHILD_TIMEOUT = 60  # seconds; only a guard against a hung child, never an assertion


def spawn(script: Path, *args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Run ``script`` with ``args`` in a fresh interpreter, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(child: subprocess.Popen[str]) -> str:
    """The child's next stdout line; fails with its stderr if it exited instead."""
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(CHILD_TIMEOUT)
        assert child.stderr is not None
        pytest.fail(f"child exited with {child.returncode} before answering:\n{child.stderr.read()}")
    return line.rstrip("\n")


def drain_killed(child: subprocess.Popen[str]) -> list[str]:
    """The whole lines a SIGKILLed child printed that were not read yet (a cut-off last line is dropped).

    Read through ``child.stdout`` itself, not ``communicate()``: ``readline`` may have read ahead
    into its buffer, and ``communicate`` reads the pipe's descriptor directly, so it would start
    mid-line (or at the newline ending a line, giving an empty first line).
    """
    assert child.stdout is not None
    assert child.stderr is not None
    rest = child.stdout.read()
    child.wait(CHILD_TIMEOUT)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()
    return rest.split("\n")[:-1]
