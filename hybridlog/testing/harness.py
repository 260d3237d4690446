"""The writer-kill harness: the one home of running a child process and killing it deterministically.

A crash test runs a real writer in a child process (usually the test file itself, run as a script
with arguments) and kills it with SIGKILL. Where it dies is chosen by the parent, up front, as a
``KillPlan``, and carried to the child in the ``HYBRIDLOG_KILL_AT`` environment variable: at a
named failpoint (``hybridlog.failpoints``) during the child's Nth write group, or right after it
printed its Nth acknowledgement. The child kills itself there, so the same plan gives the same
crash on an idle machine and on a loaded one; a seeded ``random.Random`` choosing plans
(``KillPlan.choose``) keeps the variety without timing.

A plan can also be sent to a child that is already running (``send_plan`` on its stdin; the child
called ``arm_when_told``): it then counts from when it gets the plan, so the child runs, appending,
for as long as the parent needs (say, while it kills another process), then dies at a named step.

Parent side: ``spawn`` / ``read_line`` / ``drain_killed`` for a child answering line by line,
``run_until_killed`` for a child run to its planned death. Child side: ``arm_from_environment``
once at start (or ``arm_when_told``), then ``acknowledge(line)`` after each append that returned.

Needs pytest (install the ``testing`` extra: ``pip install hybridlog[testing]``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridlog import failpoints

CHILD_TIMEOUT = 60  # seconds; only a guard against a hung child, never an assertion
KILL_AT_ENV = "HYBRIDLOG_KILL_AT"
ACK = "ack"  # the plan step meaning "after the Nth acknowledgement"


@dataclass(frozen=True)
class KillPlan:
    """Where a child dies: at failpoint ``step`` in its ``nth`` write group, or after its ``nth`` ack.

    A write group is one ``append`` in a child that appends from one thread.
    """

    step: str
    nth: int

    def __post_init__(self) -> None:
        if self.step != ACK and self.step not in failpoints.STEPS:
            raise ValueError(f"unknown kill step {self.step!r}")
        if self.nth < 1:
            raise ValueError(f"nth counts from 1, got {self.nth}")

    @classmethod
    def choose(cls, rng: random.Random, low: int, high: int) -> KillPlan:
        """A step (any failpoint, or after an acknowledgement) and an ``nth`` in ``low..high``."""
        return cls(rng.choice((*failpoints.STEPS, ACK)), rng.randint(low, high))

    @property
    def acknowledged(self) -> int:
        """How many appends the child acknowledged before it died."""
        return self.nth if self.step == ACK else self.nth - 1

    @property
    def in_flight_lands(self) -> bool:
        """Whether the batch in flight is there after a reopen: its bytes were written whole (a
        SIGKILL keeps what the kernel has, fsynced or not), so the catalog has it or recovery adopts it."""
        return self.step in ("segment-written", "segment-synced", "catalog-committed")

    def __str__(self) -> str:
        return f"{self.step}@{self.nth}"

    @classmethod
    def parse(cls, text: str) -> KillPlan:
        """The plan ``str(plan)`` gave."""
        step, nth = text.strip().rsplit("@", 1)
        return cls(step, int(nth))

    def environment(self) -> dict[str, str]:
        """This process's environment plus the plan, for the child."""
        return {**os.environ, KILL_AT_ENV: str(self)}


# --- parent side -----------------------------------------------------------------------------------


def spawn(
    script: Path, *args: str, stdin: int = subprocess.DEVNULL, plan: KillPlan | None = None
) -> subprocess.Popen[str]:
    """Run ``script`` with ``args`` in a fresh interpreter, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if plan is None else plan.environment(),
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


def send_plan(child: subprocess.Popen[str], plan: KillPlan) -> None:
    """Arm ``plan`` in a running child that called ``arm_when_told``: it dies at the plan's step in
    its Nth write group from now, or after its Nth acknowledgement from now."""
    assert child.stdin is not None
    child.stdin.write(f"{plan}\n")
    child.stdin.flush()


def run_until_killed(script: Path, *args: str, plan: KillPlan | None, stdin: str | None = None) -> list[str]:
    """Run ``script`` with ``args`` (and ``stdin`` as its input) until it kills itself as ``plan``
    says (None: where the child itself arranged it); the whole lines it printed."""
    child = subprocess.run(
        [sys.executable, str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=None if plan is None else plan.environment(),
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"child ended on its own ({child.returncode}):\n{child.stderr}"
    return child.stdout.split("\n")[:-1]


# --- child side ------------------------------------------------------------------------------------

_acks = 0
_acks_until_kill: int | None = None  # the acknowledgement count at which this process dies


def kill_self() -> None:
    """SIGKILL this process: no cleanup, no flush, no atexit; what the kernel has is what stays."""
    os.kill(os.getpid(), signal.SIGKILL)


def arm(plan: KillPlan) -> None:
    """Make this process die where ``plan`` says, counting write groups and acks from now."""
    global _acks_until_kill
    if plan.step == ACK:
        _acks_until_kill = _acks + plan.nth
        return
    hits = 0

    def count_then_kill() -> None:
        nonlocal hits
        hits += 1
        if hits == plan.nth:
            kill_self()

    failpoints.arm(plan.step, count_then_kill)


def arm_from_environment() -> KillPlan | None:
    """Arm the plan the parent put in ``HYBRIDLOG_KILL_AT`` (``step@nth``), if any."""
    text = os.environ.get(KILL_AT_ENV)
    if not text:
        return None
    plan = KillPlan.parse(text)
    arm(plan)
    return plan


def arm_when_told() -> None:
    """Arm the plan the parent sends on stdin (``send_plan``), whenever it comes, while this
    process goes on appending in its main thread."""

    def wait_for_plan() -> None:
        line = sys.stdin.readline()
        if line:
            arm(KillPlan.parse(line))

    threading.Thread(target=wait_for_plan, name="kill-plan", daemon=True).start()


def acknowledge(line: str) -> None:
    """Print an acknowledgement line (flushed); die here if this is the planned Nth one."""
    global _acks
    print(line, flush=True)
    _acks += 1
    if _acks == _acks_until_kill:
        kill_self()
