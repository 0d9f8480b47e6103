"""The executor's pending activity attempts, each with a deadline that re-drives it.

An attempt is *pending* from its ``activity_started`` event until its result
or its timeout is recorded. Its task was published once; if that task, or its
result on the way back, is lost (a worker killed at the wrong moment, a
broker restarted), nothing else would ever move the workflow, whatever the
activity's timeout (an activity may have none). So every pending attempt has
a deadline: when it passes with the attempt still pending, the owner
publishes the same task again (same task id). The activity workers' ``done-tasks``
table turns that into a re-publication of the result when the attempt had
finished, and a worker still running it ignores the copy; only an attempt
that was really lost runs again.

The deadline is kept in memory, from state that is durable: the history
records the attempt as started, and a new owner of the partition (after a
crash or a rebalance) resumes every running workflow, which dispatches each
pending attempt again and starts its deadline anew here.

An attempt with a heartbeat timeout has a second deadline, armed by the first
heartbeat (its worker sends one as it starts the attempt: time spent in the
task queue does not count, a lost task is the re-drive's business); each
heartbeat command moves it on (``heartbeat``); when it passes
(``missed``), the owner fails the attempt as timed out, and the retry gets the
details of the last heartbeat (``details``), kept here by step until the run
ends. Like the deadlines, the details are in memory: a new owner of the
partition starts the heartbeat deadline anew, and a retry after that takeover
starts without details.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ._commands import Command
from ._machine import Task


@dataclass
class Attempt:
    """One pending attempt: its task, where it is owned, and when it was last sent."""

    task: Task
    partition: int
    started: float
    """When the attempt was recorded as started (epoch seconds, from its event)."""
    dispatched: float
    """When its task was last sent."""
    redrives: int = 0
    inherited: bool = False
    """Started by the previous generation: its task goes to that generation's queue."""
    beat: float | None = None
    """When it last heartbeat; None until its worker starts it (its first heartbeat)."""
    missed_at: float | None = None
    """When its missed heartbeat was last reported (reported again if not applied)."""
    local: bool = False
    """Run by this worker itself (eager dispatch): never re-driven while it runs, as a
    copy on the task topic could run on another worker at the same time."""


class PendingAttempts:
    """Pending attempts of the owned partitions, by workflow.

    Args:
        redrive_after: how long an attempt may stay pending after its task was
            sent before it is sent again; doubled at each re-drive, up to
            ``redrive_max``.
        redrive_max: the longest wait between two re-drives.
    """

    def __init__(self, redrive_after: float, redrive_max: float) -> None:
        self.redrive_after = redrive_after
        self.redrive_max = redrive_max
        self._by_run: dict[str, dict[tuple[int, int], Attempt]] = {}
        self._details: dict[str, dict[int, Any]] = {}
        # local attempts that ended without a result before the activation that
        # started them recorded them (an attempt runs up to its first suspension
        # at once): the update that follows must not mark them local; by
        # workflow, with the partition the note belongs to
        self._released: dict[str, tuple[int, set[tuple[int, int]]]] = {}

    def update(
        self,
        workflow_id: str,
        partition: int,
        pending: list[Task],
        sent: list[Task],
        started: dict[tuple[int, int], float] | None = None,
        now: float | None = None,
        inherited: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
        local: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
    ) -> None:
        """After a command: the run's attempts now ``pending``, those ``sent`` just now.

        ``started`` gives when attempts new to this index were recorded as
        started (a resume after a takeover); others count from ``now``. Those
        in ``local`` (also in ``sent``) run on this worker.
        """
        now = time.time() if now is None else now
        note = self._released.pop(workflow_id, None)
        released = None if note is None else note[1]
        if not pending:
            self._by_run.pop(workflow_id, None)
            return
        known = self._by_run.get(workflow_id, {})
        just_sent = {(t.step, t.attempt) for t in sent}
        fresh: dict[tuple[int, int], Attempt] = {}
        for task in pending:
            key = (task.step, task.attempt)
            attempt = known.get(key)
            if attempt is None:
                begun = now if started is None else started.get(key, now)
                attempt = Attempt(task, partition, begun, now, inherited=key in inherited)
            elif key in just_sent:
                attempt.dispatched, attempt.redrives = now, 0
            if key in just_sent:
                attempt.local = key in local and (released is None or key not in released)
            fresh[key] = attempt
        self._by_run[workflow_id] = fresh

    def forget(self, partitions: set[int]) -> None:
        """Drop the attempts of partitions no longer owned here."""
        for wid in [w for w, a in self._by_run.items() if _partition(a) in partitions]:
            del self._by_run[wid]
            self._details.pop(wid, None)
        # notes of activations whose effects were not written: the partition is read again
        for wid in [w for w, (p, _) in self._released.items() if p in partitions]:
            del self._released[wid]

    def release(self, workflow_id: str, partition: int, step: int, attempt: int) -> None:
        """A local attempt of ``partition`` ended without a result to apply: it is
        re-driven when due."""
        found = self._by_run.get(workflow_id, {}).get((step, attempt))
        if found is None:  # not recorded yet: its activation is still running
            self._released.setdefault(workflow_id, (partition, set()))[1].add((step, attempt))
        else:
            found.local = False

    def ended(self, workflow_id: str) -> None:
        """The run ended: forget its heartbeat details."""
        self._details.pop(workflow_id, None)

    def heartbeat(
        self, workflow_id: str, step: int, attempt: int, details: Any, now: float | None = None
    ) -> bool:
        """A heartbeat of a pending attempt: move its deadline, keep its details.

        False if the attempt is not pending here (unknown, or already ended).
        """
        found = self._by_run.get(workflow_id, {}).get((step, attempt))
        if found is None:
            return False
        found.beat = time.time() if now is None else now
        found.missed_at = None
        if details is not None:
            self._details.setdefault(workflow_id, {})[step] = details
        return True

    def details(self, workflow_id: str, step: int) -> Any:
        """The last heartbeat details of ``step`` (of any attempt), or None."""
        return self._details.get(workflow_id, {}).get(step)

    def missed(self, owned: set[int], refire: float, now: float | None = None) -> list[Attempt]:
        """Attempts of ``owned`` partitions past their heartbeat timeout (each reported once
        per ``refire`` seconds until its failure is applied)."""
        now = time.time() if now is None else now
        out = []
        for attempts in self._by_run.values():
            for attempt in attempts.values():
                limit = attempt.task.heartbeat_timeout
                if limit is None or attempt.partition not in owned or attempt.inherited:
                    continue
                if attempt.beat is None or now - attempt.beat < limit:
                    continue
                if attempt.missed_at is not None and now - attempt.missed_at < refire:
                    continue
                attempt.missed_at = now
                out.append(attempt)
        return out

    def due(self, owned: set[int], now: float | None = None) -> list[Attempt]:
        """Attempts of ``owned`` partitions whose deadline passed; each is marked re-sent."""
        now = time.time() if now is None else now
        out = []
        for attempts in self._by_run.values():
            for attempt in attempts.values():
                if attempt.partition not in owned or attempt.local:
                    continue
                wait = min(self.redrive_after * 2**attempt.redrives, self.redrive_max)
                if now - attempt.dispatched >= wait:
                    attempt.dispatched = now
                    attempt.redrives += 1
                    out.append(attempt)
        return out

    def of(self, workflow_id: str) -> dict[tuple[int, int], Attempt]:
        return dict(self._by_run.get(workflow_id, {}))

    def oldest(self) -> dict[int, float]:
        """Per partition, when the attempt pending longest was recorded as started."""
        out: dict[int, float] = {}
        for attempts in self._by_run.values():
            for attempt in attempts.values():
                p = attempt.partition
                out[p] = min(out.get(p, attempt.started), attempt.started)
        return out

    def __len__(self) -> int:
        return sum(len(a) for a in self._by_run.values())


def _partition(attempts: dict[tuple[int, int], Attempt]) -> int | None:
    for attempt in attempts.values():
        return attempt.partition
    return None


@dataclass
class Start:
    """The start of a child workflow its parent waits on, and when it was last sent."""

    command: Command
    partition: int
    dispatched: float
    redrives: int = 0


class PendingStarts:
    """Child starts of the owned partitions not answered yet, by parent workflow.

    A parent waits for its child's ``child_result``; if the start, or the
    answer, is lost (a worker killed between recording and sending), nothing
    else would move the parent. So each pending start has a deadline like an
    activity attempt: past it, the same start (same command id) is sent again.
    The child's owner ignores a copy for a running child and answers a copy
    for an ended one with its result again. Kept in memory: a new owner's
    resume sends every pending start again and starts its deadline anew.
    """

    def __init__(self, redrive_after: float, redrive_max: float) -> None:
        self.redrive_after = redrive_after
        self.redrive_max = redrive_max
        self._by_run: dict[str, dict[str, Start]] = {}

    def update(
        self,
        workflow_id: str,
        partition: int,
        pending: list[Command],
        sent: list[Command],
        now: float | None = None,
    ) -> None:
        """After a command: the parent's child starts now ``pending``, those ``sent`` just now."""
        now = time.time() if now is None else now
        if not pending:
            self._by_run.pop(workflow_id, None)
            return
        known = self._by_run.get(workflow_id, {})
        just_sent = {c.command_id for c in sent}
        fresh: dict[str, Start] = {}
        for cmd in pending:
            start = known.get(cmd.command_id)
            if start is None:
                start = Start(cmd, partition, now)
            elif cmd.command_id in just_sent:
                start.dispatched, start.redrives = now, 0
            fresh[cmd.command_id] = start
        self._by_run[workflow_id] = fresh

    def forget(self, partitions: set[int]) -> None:
        """Drop the starts of partitions no longer owned here."""
        self._by_run = {
            wid: starts
            for wid, starts in self._by_run.items()
            if not any(s.partition in partitions for s in starts.values())
        }

    def due(self, owned: set[int], now: float | None = None) -> list[Start]:
        """Starts of ``owned`` partitions whose deadline passed; each is marked re-sent."""
        now = time.time() if now is None else now
        out = []
        for starts in self._by_run.values():
            for start in starts.values():
                if start.partition not in owned:
                    continue
                wait = min(self.redrive_after * 2**start.redrives, self.redrive_max)
                if now - start.dispatched >= wait:
                    start.dispatched = now
                    start.redrives += 1
                    out.append(start)
        return out

    def of(self, workflow_id: str) -> dict[str, Start]:
        return dict(self._by_run.get(workflow_id, {}))

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_run.values())
