"""The executor's state machine and ``update`` commands: one update per id, answers on time.

No broker: commands go straight to :class:`Machine`, as the worker hands them
over, and the effects are read back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.streaming._machine import Command, CommandKind, Effects, Machine, Run
from app.workflow import EventType
from app.workflow._names import FunctionTable
from tests.conformance import workflows as wf


def _machine() -> Machine:
    return Machine(
        FunctionTable("workflow", [wf.with_updates]), FunctionTable("activity", [wf.double])
    )


def _cmd(kind: str, command_id: str, **fields: Any) -> Command:
    return Command(
        command_id=command_id,
        kind=kind,
        workflow_id="w",
        issued_at=datetime.now(UTC),
        reply_to=fields.pop("reply_to", "client-1"),
        **fields,
    )


def _started(machine: Machine) -> Run:
    run, fx = machine.handle(None, _cmd(CommandKind.START, "s", name="with_updates", payload=1))
    assert run is not None and fx.reply is not None and fx.reply.ok
    return run


def _finish_activity(machine: Machine, run: Run, fx: Effects) -> Effects:
    (task,) = fx.tasks
    result = wf.double(task.input)
    _, done = machine.handle(
        run,
        _cmd(
            CommandKind.ACTIVITY_RESULT,
            f"r{task.step}",
            run_id=run.state.run_id,
            step=task.step,
            attempt=task.attempt,
            payload=result,
            reply_to=None,
        ),
    )
    return done


def test_the_reply_comes_when_the_update_completes_and_a_resend_waits_again() -> None:
    machine = _machine()
    run = _started(machine)
    _, fx = machine.handle(run, _cmd(CommandKind.UPDATE, "u-1", name="add", payload=5))
    assert fx.reply is None  # not answered yet: its activity runs
    assert [e.type for e in fx.events] == [EventType.UPDATE_ACCEPTED, EventType.ACTIVITY_STARTED]

    # the client resends (same command id = update id), another client asks too
    _, again = machine.handle(run, _cmd(CommandKind.UPDATE, "u-1", name="add", payload=5))
    _, other = machine.handle(
        run, _cmd(CommandKind.UPDATE, "u-1", name="add", payload=5, reply_to="client-2")
    )
    assert again.reply is None and other.reply is None
    assert again.events == [] and again.tasks == [] and other.events == []

    done = _finish_activity(machine, run, fx)
    assert done.events[-1].type is EventType.UPDATE_COMPLETED
    answers = sorted((to, cid, r.ok, r.payload) for to, cid, r in done.replies)
    assert answers == [("client-1", "u-1", True, 11), ("client-2", "u-1", True, 11)]

    # once recorded, the same id is answered at once, without a new event
    _, late = machine.handle(run, _cmd(CommandKind.UPDATE, "u-1", name="add", payload=5))
    assert late.reply is not None and late.reply.ok and late.reply.payload == 11
    assert late.events == []
    kinds = [e.type for e in run.state.history]
    assert kinds.count(EventType.UPDATE_ACCEPTED) == 1
    assert kinds.count(EventType.ACTIVITY_STARTED) == 1


def test_refusals_reply_at_once_and_record_nothing() -> None:
    machine = _machine()
    run = _started(machine)
    before = len(run.state.history)
    _, rejected = machine.handle(run, _cmd(CommandKind.UPDATE, "u-2", name="add", payload=-3))
    _, unknown = machine.handle(run, _cmd(CommandKind.UPDATE, "u-3", name="nope"))
    assert rejected.reply is not None and rejected.reply.error_type == "update_rejected"
    assert rejected.reply.error == "amount must be zero or more, got -3"
    assert unknown.reply is not None and unknown.reply.error_type == "update_not_found"
    assert unknown.reply.payload == ["add", "fail", "hold", "peek"]
    assert len(run.state.history) == before
    assert rejected.events == unknown.events == []


def test_an_ended_run_answers_only_updates_it_recorded() -> None:
    machine = _machine()
    run = _started(machine)
    _, fx = machine.handle(run, _cmd(CommandKind.UPDATE, "u-1", name="peek"))
    assert fx.reply is None and fx.replies[0][2].payload == 1  # answered in the same step
    machine.handle(run, _cmd(CommandKind.SIGNAL, "sig", name="finish"))
    assert not run.running
    _, known = machine.handle(run, _cmd(CommandKind.UPDATE, "u-1", name="peek"))
    _, new = machine.handle(run, _cmd(CommandKind.UPDATE, "u-9", name="peek"))
    assert known.reply is not None and known.reply.ok and known.reply.payload == 1
    assert new.reply is not None and new.reply.error_type == "not_found"
    assert new.reply.error == "cannot update: it is not running (it is completed)"
