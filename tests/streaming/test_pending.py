"""The deadlines of pending activity attempts (``_pending.py``), with no broker."""

from __future__ import annotations

import dataclasses

from app.streaming._machine import Task
from app.streaming._pending import PendingAttempts


def task(step: int, attempt: int = 1, wid: str = "w") -> Task:
    return Task(f"{wid}/run/{step}/{attempt}", wid, "run", "act", step, attempt, None, None)


def test_a_pending_attempt_is_due_after_its_deadline_then_waits_twice_as_long() -> None:
    p = PendingAttempts(redrive_after=10, redrive_max=35)
    t = task(1)
    p.update("w", 3, [t], [t], now=100.0)
    assert p.due({3}, now=109.9) == []
    (due,) = p.due({3}, now=110.0)
    assert due.task == t and due.redrives == 1
    assert p.due({3}, now=129.0) == []  # next wait: 20 s
    assert len(p.due({3}, now=130.0)) == 1
    assert p.due({3}, now=164.0) == []  # next wait: 40 s, capped at 35
    assert len(p.due({3}, now=165.0)) == 1


def test_sending_again_restarts_the_deadline_and_an_ended_attempt_is_forgotten() -> None:
    p = PendingAttempts(redrive_after=10, redrive_max=300)
    first, second = task(1), task(2)
    p.update("w", 0, [first], [first], now=0.0)
    assert len(p.due({0}, now=10.0)) == 1
    p.update("w", 0, [first], [first], now=15.0)  # a resume sent it again
    assert p.due({0}, now=24.0) == []
    assert len(p.due({0}, now=25.0)) == 1
    p.update("w", 0, [second], [second], now=30.0)  # step 1 completed, step 2 started
    assert set(p.of("w")) == {(2, 1)}
    p.update("w", 0, [], [], now=31.0)
    assert p.of("w") == {} and len(p) == 0


def test_only_owned_partitions_are_due_and_lost_ones_are_dropped() -> None:
    p = PendingAttempts(redrive_after=1, redrive_max=1)
    p.update("a", 0, [task(1, wid="a")], [], now=0.0)
    p.update("b", 1, [task(1, wid="b")], [], now=0.0)
    assert [a.task.workflow_id for a in p.due({1}, now=5.0)] == ["b"]
    p.forget({0})
    assert p.of("a") == {} and set(p.of("b")) == {(1, 1)}


def test_age_counts_from_the_recorded_start_and_inherited_attempts_are_marked() -> None:
    p = PendingAttempts(redrive_after=30, redrive_max=300)
    t = task(4, 2)
    p.update("w", 2, [t], [t], started={(4, 2): 50.0}, now=80.0, inherited={(4, 2)})
    attempt = p.of("w")[(4, 2)]
    assert attempt.started == 50.0 and attempt.dispatched == 80.0
    assert attempt.inherited
    assert p.oldest() == {2: 50.0}


def test_a_heartbeat_deadline_arms_at_the_first_heartbeat_and_keeps_the_details() -> None:
    p = PendingAttempts(redrive_after=1000, redrive_max=1000)
    first = dataclasses.replace(task(1), heartbeat_timeout=3.0)
    p.update("w", 0, [first], [first], now=0.0)
    assert p.missed({0}, refire=2.0, now=100.0) == []  # not started yet: queued time is free
    assert p.heartbeat("w", 1, 1, {"done": 4}, now=100.0)
    assert p.missed({0}, refire=2.0, now=102.9) == []
    assert p.heartbeat("w", 1, 1, None, now=102.9)  # no details: the last ones stay
    (missed,) = p.missed({0}, refire=2.0, now=106.0)
    assert missed.task == first
    assert p.missed({0}, refire=2.0, now=107.0) == []  # reported again only after refire
    assert len(p.missed({1}, refire=2.0, now=200.0)) == 0  # not an owned partition
    assert len(p.missed({0}, refire=2.0, now=108.0)) == 1
    # the failure applied: attempt 2 waits for its backoff, then is sent with the details
    p.update("w", 0, [], [], now=108.5)
    assert p.details("w", 1) == {"done": 4}
    assert not p.heartbeat("w", 1, 1, {"done": 5}, now=109.0)  # no longer pending
    p.ended("w")
    assert p.details("w", 1) is None


def test_an_attempt_run_here_is_never_re_driven_until_released() -> None:
    p = PendingAttempts(redrive_after=1, redrive_max=1)
    eager, sent = task(1), task(2)
    p.update("w", 0, [eager, sent], [eager, sent], now=0.0, local={(1, 1)})
    assert [a.task for a in p.due({0}, now=5.0)] == [sent]
    p.update("w", 0, [eager, sent], [], now=6.0)  # another command: still running here
    assert [a.task for a in p.due({0}, now=10.0)] == [sent]
    p.release("w", 0, 1, 1)  # it ended without a result to apply
    assert eager in [a.task for a in p.due({0}, now=20.0)]
    p.update("w", 0, [eager], [eager], now=21.0)  # a resume sent it on the task topic
    assert not p.of("w")[(1, 1)].local


def test_an_attempt_released_before_its_activation_recorded_it_is_not_held_here() -> None:
    """An eager attempt runs up to its first suspension at once: it may end without
    a result before the activation that started it records it."""
    p = PendingAttempts(redrive_after=1, redrive_max=1)
    failed, running = task(1), task(2)
    p.release("w", 0, 1, 1)
    p.update("w", 0, [failed, running], [failed, running], now=0.0, local={(1, 1), (2, 1)})
    assert not p.of("w")[(1, 1)].local and p.of("w")[(2, 1)].local
    assert [a.task for a in p.due({0}, now=5.0)] == [failed]
    p.release("x", 0, 3, 1)  # noted for a run whose activation failed: the partition is read again
    p.release("y", 1, 4, 1)  # and one of a partition still owned here
    p.forget({0})
    later = task(3, wid="x")
    p.update("x", 0, [later], [later], now=6.0, local={(3, 1)})
    assert p.of("x")[(3, 1)].local
    kept = task(4, wid="y")
    p.update("y", 1, [kept], [kept], now=6.0, local={(4, 1)})
    assert not p.of("y")[(4, 1)].local
