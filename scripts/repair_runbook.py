#!/usr/bin/env python3
"""Repair runbook: check a store, show what is wrong and the plan, repair after confirmation, verify.

    .venv/bin/python scripts/repair_runbook.py STORE [--stream N ...] [--yes] [--json]

The README's repair runbook in one go, as a thin wrapper over the library:

1. ``Storage.check`` on a read-only store: every finding and the repair plan. Nothing changes.
2. Print the findings and the plan, then ask (``--yes`` skips the question; no answer is "no").
3. Open the store for writing (this takes the writer lock, and open-time recovery runs) and
   apply, with ``Storage.repair``, the confirmed steps that a fresh check under the lock still
   calls for. A step the operator did not confirm is never applied.
4. ``verify_store`` on a read-only store: every chain from genesis.
5. A summary: clean, or what remains.

Exit codes: 0 the store ends clean; 3 damage remains (also when the plan was declined); 1 error
(one line on stderr); 2 usage. ``--json`` prints one JSON object on stdout; the question and the
library's log go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hybridlog import (
    CheckpointPolicy,
    CheckReport,
    Finding,
    IntegrityError,
    RecoveryEntry,
    RepairReport,
    RepairStep,
    Storage,
    StorageError,
    VerifyReport,
    verify_store,
)

EXIT_CLEAN = 0
EXIT_ERROR = 1
EXIT_DAMAGE = 3

# RunbookResult.decision values
NOTHING_TO_DO = "nothing_to_do"
APPLIED = "applied"
DECLINED = "declined"


@dataclass(slots=True)
class RunbookResult:
    """Everything one run found and did: the check, the plan, the decision, the repair, the verify."""

    store: Path
    check: CheckReport
    plan: list[RepairStep]
    decision: str
    verify: VerifyReport
    repair: RepairReport | None = None
    recovered_on_open: list[RecoveryEntry] = field(default_factory=list)

    @property
    def final_check(self) -> CheckReport:
        """The latest check: the one after the repair if there was one, else the first."""
        if self.repair is not None and self.repair.after is not None:
            return self.repair.after
        return self.check

    @property
    def clean(self) -> bool:
        return self.final_check.ok and self.verify.ok

    @property
    def exit_code(self) -> int:
        return EXIT_CLEAN if self.clean else EXIT_DAMAGE

    def as_dict(self) -> dict[str, object]:
        return {
            "store": str(self.store),
            "check": self.check.as_dict(),
            "plan": [s.as_dict() for s in self.plan],
            "decision": self.decision,
            "recovered_on_open": [asdict(e) for e in self.recovered_on_open],
            "repair": None if self.repair is None else self.repair.as_dict(),
            "verify": self.verify.as_dict(),
            "remaining": [f.as_dict() for f in self.final_check.findings if f.repair is not None],
            "clean": self.clean,
            "exit_code": self.exit_code,
        }


def _admin_store(store: Path, *, read_only: bool) -> Storage:
    """The store as the admin commands open it: no checkpoints of the runbook's own on close."""
    return Storage(store, read_only=read_only, checkpoint_policy=CheckpointPolicy.explicit())


def run_check(store: Path, stream_ids: list[int] | None) -> tuple[CheckReport, list[RepairStep]]:
    """Step 1: the check and its plan, from a read-only store. Never creates a store."""
    if not store.is_dir():
        raise StorageError(f"no store at {store}", hint="check the path; the runbook never creates a store")
    with _admin_store(store, read_only=True) as reader:
        check = reader.check(stream_ids)
    return check, check.plan(stream_ids)


def apply_confirmed(
    store: Path, stream_ids: list[int] | None, plan: list[RepairStep]
) -> tuple[RepairReport, list[RecoveryEntry]]:
    """Step 3: open for writing and apply the confirmed steps a fresh check under the lock still needs.

    Opening for writing runs open-time recovery, which may already fix part of the plan (a torn
    tail); what it did is returned too. Steps the fresh check adds are not applied: they were
    not confirmed, and they show up as remaining findings.
    """
    confirmed = {(s.repair, s.stream_id) for s in plan}
    with _admin_store(store, read_only=False) as writer:
        recovered = [e for r in writer.recovery_results() for e in r.entries]
        still_needed = writer.check(stream_ids).plan(stream_ids)
        steps = [s for s in still_needed if (s.repair, s.stream_id) in confirmed]
        return writer.repair(steps, stream_ids=stream_ids), recovered


def run_verify(store: Path, stream_ids: list[int] | None) -> VerifyReport:
    """Step 4: every chain from genesis, read-only."""
    with _admin_store(store, read_only=True) as reader:
        return verify_store(reader, stream_ids)


def _plan_question(store: Path, plan: list[RepairStep]) -> str:
    steps = "1 step" if len(plan) == 1 else f"{len(plan)} steps"
    return f"apply this plan ({steps}) to {store}?"


# --- rendering -----------------------------------------------------------------------------------


def _where(f: Finding) -> str:
    parts = [
        f"offset {f.offset}" if f.offset is not None else "",
        f"segment {f.segment}" if f.segment is not None else "",
        f"byte {f.position}" if f.position is not None else "",
    ]
    shown = ", ".join(p for p in parts if p)
    return f" at {shown}" if shown else ""


def _finding_line(f: Finding) -> str:
    stream = "store" if f.stream_id is None else f"stream {f.stream_id}"
    fix = f" -> {f.repair}" if f.repair else " (no repair needed)"
    return f"  {stream}: {f.problem}: {f.message}{_where(f)}{fix}"


def _step_line(number: int, step: RepairStep) -> str:
    target = "the whole store" if step.stream_id is None else f"stream {step.stream_id}"
    effect = f"\n     {step.effect}" if step.effect else ""
    return f"  {number}. {step.repair} {target} ({step.reason}){effect}"


def _isolated(ranges: list[tuple[int, int]]) -> str:
    spans = ", ".join(str(first) if nxt == first + 1 else f"{first}..{nxt - 1}" for first, nxt in ranges)
    return f", offsets {spans} isolated by repair" if spans else ""


def _entry_line(entry: RecoveryEntry) -> str:
    stream = "store" if entry.stream_id is None else f"stream {entry.stream_id}"
    kept = f", kept in {entry.kept_as}" if entry.kept_as else ""
    return f"  {stream}: {entry.action} ({entry.found}){kept}"


def render_check(check: CheckReport, plan: list[RepairStep]) -> list[str]:
    lines = [
        f"check: {check.streams_checked} streams, {check.records_verified} records verified, "
        f"{len(check.findings)} findings"
    ]
    lines += [_finding_line(f) for f in check.findings]
    if plan:
        lines.append("plan:")
        lines += [_step_line(i, s) for i, s in enumerate(plan, 1)]
    return lines


def render_outcome(result: RunbookResult) -> list[str]:
    lines: list[str] = []
    if result.decision == DECLINED:
        lines.append("repair: declined; nothing was changed")
    if result.recovered_on_open:
        lines.append("recovered when the store was opened for writing:")
        lines += [_entry_line(e) for e in result.recovered_on_open]
    if result.repair is not None:
        lines.append(f"repair: applied {len(result.repair.applied)} steps")
        lines += [_entry_line(e) for e in result.repair.entries]
    verdicts = ", ".join(
        f"stream {v.stream_id} {'ok' if v.ok else 'DAMAGED'}{_isolated(v.isolated)}" for v in result.verify.streams
    )
    lines.append(f"verify: {result.verify.records} records verified ({verdicts or 'no streams'})")
    lines += [f"  {v.error}" for v in result.verify.streams if v.error is not None]
    remaining = [f for f in result.final_check.findings if f.repair is not None]
    if result.clean:
        lines.append(f"result: CLEAN: {result.store} checks and verifies clean")
    else:
        lines.append(f"result: DAMAGE REMAINS: {len(remaining)} findings; run `hybridlog check {result.store}`")
        lines += [_finding_line(f) for f in remaining]
    return lines


# --- the command ---------------------------------------------------------------------------------


def ask_on_terminal(question: str) -> bool:
    """Ask on stderr, read the answer from stdin; anything but y/yes (including no input) is no."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # no answer was typed: end the question's line
    return answer.strip().lower() in {"y", "yes"}


def stream_id(text: str) -> int:
    """An argparse type: a stream id, 0..2**63-1."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"stream ids are 0..2**63-1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check a hybridlog store, show the repair plan, repair after confirmation, then verify.",
        epilog="Exit codes: 0 clean at the end, 3 damage remains, 1 error, 2 usage.",
    )
    parser.add_argument("store", type=Path, help="the store directory")
    parser.add_argument(
        "--stream",
        dest="stream_ids",
        type=stream_id,
        action="append",
        metavar="N",
        help="only this stream (repeatable)",
    )
    parser.add_argument("--yes", action="store_true", help="apply the plan without asking")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object on stdout")
    return parser.parse_args(argv)


def run(store: Path, stream_ids: list[int] | None, *, yes: bool, as_json: bool) -> RunbookResult:
    """The runbook: check, show, ask, repair, verify. Text goes to stdout as each step finishes."""
    check, plan = run_check(store, stream_ids)
    if not as_json:
        print("\n".join(render_check(check, plan)), flush=True)
    decision = NOTHING_TO_DO
    if plan:
        decision = APPLIED if yes or ask_on_terminal(_plan_question(store, plan)) else DECLINED
    repair: RepairReport | None = None
    recovered: list[RecoveryEntry] = []
    if decision == APPLIED:
        repair, recovered = apply_confirmed(store, stream_ids, plan)
    return RunbookResult(store, check, plan, decision, run_verify(store, stream_ids), repair, recovered)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    as_json: bool = args.as_json
    try:
        result = run(args.store, args.stream_ids, yes=args.yes, as_json=as_json)
    except IntegrityError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DAMAGE
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or args.store}", file=sys.stderr)
        return EXIT_ERROR
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        print("\n".join(render_outcome(result)))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
