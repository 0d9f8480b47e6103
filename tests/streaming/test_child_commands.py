"""The commands between a parent and its child (``_children.py``), through ``Machine``, no broker.

Two machines stand for two workers: what one emits is handed to the other,
as the commands topic would, including the copies a crash or a re-drive
would send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from app.streaming._children import ALREADY_RUNNING, NOT_REGISTERED
from app.streaming._consumer import Producer
from app.streaming._machine import Command, CommandKind, Effects, Machine, ParentRef, Run
from app.streaming._metrics import WorkerMetrics
from app.streaming._pending import PendingStarts
from app.streaming._runs import RunStore
from app.workflow import EventType, WorkflowContext, WorkflowStatus
from app.workflow._names import FunctionTable
from tests.streaming.test_continue_state import _Producer
from topics import Topology


async def kid(ctx: WorkflowContext, x: int) -> int:
    got: int = await ctx.receive_signal("go").receive()
    return x + got


async def parent(ctx: WorkflowContext, x: int) -> int:
    child = await ctx.start_child(kid, x, id="kid")
    await child.signal("go", 5)
    result: int = await child.result()
    return result


def machine(*workflows: object) -> Machine:
    return Machine(FunctionTable("workflow", list(workflows)), FunctionTable("activity", []))


def command(kind: str, wid: str, **fields: object) -> Command:
    return Command(
        command_id=f"{kind}-{wid}",
        kind=kind,
        workflow_id=wid,
        issued_at=datetime.now(UTC),
        **fields,  # type: ignore[arg-type]
    )


def sent(fx: Effects, kind: str) -> list[Command]:
    return [c for c in fx.commands if c.kind == kind]


def start_parent(m: Machine) -> tuple[Run, Effects]:
    run, fx = m.handle(None, command(CommandKind.START, "p", name="parent", payload=1))
    assert run is not None
    return run, fx


def test_a_parent_and_its_child_exchange_start_signal_and_result() -> None:
    m = machine(parent, kid)
    p, fx = start_parent(m)
    (start,) = sent(fx, CommandKind.START)
    (sig,) = sent(fx, CommandKind.SIGNAL)
    assert start.command_id == f"child/{p.state.run_id}/1/1" and start.parent is not None
    assert (start.parent.workflow_id, start.parent.run_id) == ("p", p.state.run_id)
    assert sig.command_id == f"child-signal/{p.state.run_id}/2"
    assert [c.command_id for c in m.child_starts(p)] == [start.command_id]

    child, cfx = m.handle(None, start)
    assert child is not None and child.state.history[0].parent_workflow_id == "p"
    child, cfx = m.handle(child, sig)
    assert child is not None and child.state.status is WorkflowStatus.COMPLETED
    (answer,) = sent(cfx, CommandKind.CHILD_RESULT)
    assert (answer.workflow_id, answer.run_id, answer.step, answer.attempt) == (
        "p",
        p.state.run_id,
        1,
        1,
    )
    assert answer.payload == 6 and answer.child_run_id == child.state.run_id

    # a copy of the signal is dropped; a copy of the start answers with the result again
    _, again = m.handle(child, sig)
    assert again.duplicate and again.commands == []
    _, again = m.handle(child, start)
    assert [c.command_id for c in sent(again, CommandKind.CHILD_RESULT)] == [answer.command_id]

    p2, _pfx = m.handle(p, answer)
    assert p2 is not None and p2.state.status is WorkflowStatus.COMPLETED and p2.state.result == 6
    ended = [e for e in p2.state.history if e.type is EventType.CHILD_WORKFLOW_COMPLETED]
    assert [(e.child_workflow_id, e.new_run_id) for e in ended] == [("kid", child.state.run_id)]
    _, dup = m.handle(p2, answer)  # the answer again: the parent has ended
    assert dup.events == []


def test_a_start_that_cannot_be_applied_is_answered_with_a_non_retryable_failure() -> None:
    m = machine(parent, kid)
    p, fx = start_parent(m)
    (start,) = sent(fx, CommandKind.START)
    other, _ = m.handle(None, command(CommandKind.START, "kid", name="kid", payload=0))
    _, refused = m.handle(other, start)
    (answer,) = sent(refused, CommandKind.CHILD_RESULT)
    assert answer.failure is not None and answer.failure.non_retryable
    assert answer.failure.type == ALREADY_RUNNING
    p, _pfx = m.handle(p, answer)
    assert p is not None and p.state.status is WorkflowStatus.FAILED
    assert "already running" in (p.state.error or "")

    lone = machine(parent)  # the child's worker does not have its type
    _, refused = lone.handle(None, start)
    (answer,) = sent(refused, CommandKind.CHILD_RESULT)
    assert answer.failure is not None and answer.failure.type == NOT_REGISTERED


def test_a_parent_closing_a_child_it_did_not_start_changes_nothing() -> None:
    m = machine(parent, kid)
    _p, fx = start_parent(m)
    (start,) = sent(fx, CommandKind.START)
    child, _ = m.handle(None, start)
    assert child is not None
    impostor = command(CommandKind.CANCEL, "kid", parent=ParentRef("q", "someone", 1, 1))
    _, fx = m.handle(child, impostor)
    assert fx.events == []
    _, fx = m.handle(child, command(CommandKind.CANCEL, "kid", parent=start.parent))
    assert [e.type for e in fx.events][:1] == [EventType.CANCEL_REQUESTED]


def test_an_unanswered_child_start_is_sent_again_after_its_deadline() -> None:
    m = machine(parent, kid)
    p, fx = start_parent(m)
    starts = PendingStarts(redrive_after=10, redrive_max=15)
    starts.update("p", 2, m.child_starts(p), sent(fx, CommandKind.START), now=0.0)
    assert starts.due({2}, now=9.0) == []
    (due,) = starts.due({2}, now=10.0)
    assert due.command.workflow_id == "kid" and due.redrives == 1
    assert starts.due({2}, now=24.0) == [] and len(starts.due({2}, now=25.0)) == 1
    starts.update("p", 2, [], [], now=26.0)  # answered
    assert len(starts) == 0


async def test_a_copy_of_the_command_that_ended_a_parent_sends_its_closing_commands_again() -> None:
    """A crash after the parent's end was written but before its cancels reached the
    children: the ending command, read again, sends them again, also on a new owner
    that has the run only from its header."""
    m = machine(parent, kid)
    p, fx = start_parent(m)
    (start,) = sent(fx, CommandKind.START)
    child, _ = m.handle(None, start)
    assert child is not None

    cancel = command(CommandKind.CANCEL, "p", reply_to="client")
    p, fx = m.handle(p, cancel)
    assert p is not None and p.state.status is WorkflowStatus.CANCELED
    (close,) = sent(fx, CommandKind.CANCEL)
    assert (close.workflow_id, close.command_id) == ("kid", f"child-close/{p.state.run_id}/kid")

    # read again on this worker: the same close, and the client's answer again
    _, again = m.handle(p, cancel)
    assert [c.command_id for c in sent(again, CommandKind.CANCEL)] == [close.command_id]
    assert again.reply is not None and again.reply.ok

    # read again by a new owner, which rebuilt the run from its header
    store = RunStore(cast(Producer, _Producer()), Topology(app_id="t"), m, WorkerMetrics(), 10)
    restored = await store._decode("p", await store.header(p, 0))
    assert (restored.ended_by, restored.closing) == (cancel.command_id, p.closing)
    _, fresh = machine(parent, kid).handle(restored, cancel)
    assert [c.command_id for c in sent(fresh, CommandKind.CANCEL)] == [close.command_id]

    # any other command for the ended parent (its child's answer) sends nothing
    child, cfx = m.handle(child, close)
    assert child is not None and child.state.status is WorkflowStatus.CANCELED
    (answer,) = sent(cfx, CommandKind.CHILD_RESULT)
    _, late = m.handle(p, answer)
    assert late.commands == []

    # the closing cancel, delivered twice, is applied once
    _, dup = m.handle(child, close)
    assert dup.events == []
