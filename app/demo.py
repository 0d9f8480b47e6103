"""The demo: an order workflow run durably on the default SQLite store.

The workflow reserves inventory, charges the payment (the first attempt
fails on purpose, so the retry is visible in the history), waits for an
``approval`` signal, sleeps on a durable timer and ships. If no approval
arrives in time it refunds and releases the stock instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TextIO

from pydantic import BaseModel

from app._render import format_value, render_history
from app.workflow import (
    DefaultExecutor,
    Hooks,
    RetryPolicy,
    Signal,
    WorkflowContext,
    WorkflowOptions,
    WorkflowStore,
    activity,
)
from providers.sqlite import SQLiteStore

__all__ = [
    "APPROVAL_SIGNAL",
    "APPROVAL_TIMEOUT",
    "Approval",
    "DemoRun",
    "Order",
    "OrderResult",
    "Payment",
    "Reservation",
    "Shipment",
    "activities",
    "order_workflow",
    "run_demo",
    "workflows",
]

APPROVAL_SIGNAL = "approval"
APPROVAL_TIMEOUT = 30.0
"""Seconds the workflow waits for approval before refunding the order."""

SHIPPING_DELAY = 1.0
RESULT_TIMEOUT = 60.0

PAYMENT_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.2, max_interval=1.0)


# -- data -----------------------------------------------------------------------
@dataclass
class Order:
    """What the customer ordered."""

    order_id: str
    customer: str
    items: list[str] = field(default_factory=list)
    amount: float = 0.0


@dataclass
class Approval:
    """Payload of the ``approval`` signal."""

    approved_by: str
    note: str = ""


class Reservation(BaseModel):
    """Stock held for an order."""

    reservation_id: str
    items: list[str]


class Payment(BaseModel):
    """A successful charge."""

    payment_id: str
    amount: float
    attempt: int


class Shipment(BaseModel):
    """A parcel handed to the carrier."""

    tracking_number: str
    carrier: str


class OrderResult(BaseModel):
    """How the order ended."""

    order_id: str
    status: str
    reservation_id: str
    payment_id: str
    approved_by: str | None = None
    tracking_number: str | None = None


# -- activities -----------------------------------------------------------------
def _ref(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"


async def reserve_inventory(order: Order) -> Reservation:
    """Hold the ordered items in the warehouse."""
    return Reservation(reservation_id=_ref("RSV"), items=list(order.items))


def charge_payment(order: Order) -> Payment:
    """Charge the customer; the first attempt fails like a flaky gateway would."""
    attempt = activity.info().attempt
    if attempt == 1:
        raise ConnectionError("payment gateway timed out (transient)")
    return Payment(payment_id=_ref("PAY"), amount=order.amount, attempt=attempt)


async def ship_order(order: Order) -> Shipment:
    """Hand the parcel to the carrier."""
    return Shipment(tracking_number=_ref("TRK"), carrier="ACME Express")


def refund_payment(payment: Payment) -> str:
    """Give the money back."""
    return f"refunded {payment.amount:.2f} of {payment.payment_id}"


async def release_inventory(reservation: Reservation) -> str:
    """Put the held items back on the shelf."""
    return f"released {reservation.reservation_id}"


# -- workflow -------------------------------------------------------------------
async def order_workflow(ctx: WorkflowContext, order: Order) -> OrderResult:
    """Reserve, charge, wait for approval, pause, then ship (or refund on no approval)."""
    progress = {"stage": "reserving"}
    ctx.set_query_handler("stage", lambda: progress["stage"])

    reservation: Reservation = await ctx.execute_activity(reserve_inventory, order)
    progress["stage"] = "charging"
    payment: Payment = await ctx.execute_activity(charge_payment, order, retry=PAYMENT_RETRY)

    progress["stage"] = "awaiting approval"
    approvals = ctx.receive_signal(APPROVAL_SIGNAL, Approval)
    try:
        approval: Approval = await approvals.receive(timeout=APPROVAL_TIMEOUT)
    except TimeoutError:
        progress["stage"] = "refunding"
        await ctx.execute_activity(refund_payment, payment)
        await ctx.execute_activity(release_inventory, reservation)
        progress["stage"] = "expired"
        return OrderResult(
            order_id=order.order_id,
            status="expired",
            reservation_id=reservation.reservation_id,
            payment_id=payment.payment_id,
        )

    progress["stage"] = "preparing shipment"
    await ctx.sleep(SHIPPING_DELAY)
    progress["stage"] = "shipping"
    shipment: Shipment = await ctx.execute_activity(ship_order, order)
    progress["stage"] = "completed"
    return OrderResult(
        order_id=order.order_id,
        status="shipped",
        reservation_id=reservation.reservation_id,
        payment_id=payment.payment_id,
        approved_by=approval.approved_by,
        tracking_number=shipment.tracking_number,
    )


workflows: list[Callable[..., Any]] = [order_workflow]
activities: list[Callable[..., Any]] = [
    reserve_inventory,
    charge_payment,
    ship_order,
    refund_payment,
    release_inventory,
]


# -- driver ---------------------------------------------------------------------
@dataclass(frozen=True)
class DemoRun:
    """What :func:`run_demo` did: the workflow it ran, its result and final stage."""

    workflow_id: str
    result: OrderResult
    stage: str
    db_path: str


def _is_payment(result: Any) -> bool:
    # The hook only receives the recorded result, not the activity's name.
    return isinstance(result, dict) and "payment_id" in result


def _describe(store: WorkflowStore) -> str:
    return os.path.abspath(store.path) if isinstance(store, SQLiteStore) else repr(store)


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else format_value(value)


async def run_demo(
    db_path: str | None = None, out: TextIO | None = None, *, wait: float = RESULT_TIMEOUT
) -> DemoRun:
    """Run one order workflow to completion and print its story and history to ``out``.

    ``db_path=None`` uses the default store (``$WORKFLOWS_DB`` or
    ``workflows.db``). Raises ``TimeoutError`` if the workflow has not ended
    within ``wait`` seconds; it then stays running in the store.
    """
    out = out if out is not None else sys.stdout
    workflow_id = f"order-{uuid.uuid4().hex[:8]}"
    charged = asyncio.Event()

    def on_activity_complete(wid: str, result: Any) -> None:
        if wid == workflow_id and _is_payment(result):
            charged.set()

    async with AsyncExitStack() as stack:
        store = SQLiteStore(db_path) if db_path else None
        if store is not None:
            # The executor closes only a store it created itself.
            await stack.enter_async_context(store)
        executor = DefaultExecutor(
            store=store,
            hooks=Hooks(on_activity_complete=on_activity_complete),
            workflows=workflows,
            activities=activities,
        )
        ex = await stack.enter_async_context(executor)
        where = _describe(ex.store)

        order = Order(
            order_id=workflow_id,
            customer="ada@example.com",
            items=["keyboard", "usb-c cable"],
            amount=129.90,
        )
        print(f"Database  {where}", file=out)
        handle = await ex.execute(order_workflow, WorkflowOptions(id=workflow_id, input=order))
        print(f"Started   {workflow_id}  (run {handle.run_id})", file=out)

        outcome = asyncio.ensure_future(handle.result())
        payment = asyncio.ensure_future(charged.wait())
        try:
            async with asyncio.timeout(wait):
                # A workflow that fails before charging must not leave us waiting.
                await asyncio.wait({outcome, payment}, return_when=asyncio.FIRST_COMPLETED)
                if charged.is_set():
                    print("Charged   payment accepted; waiting for approval", file=out)
                    approval = Approval(approved_by="ops@example.com", note="looks good")
                    signal = Signal(name=APPROVAL_SIGNAL, payload=approval, sender_id="demo")
                    await ex.signal(workflow_id, signal)
                    print(f"Signaled  {APPROVAL_SIGNAL!r} by {approval.approved_by}", file=out)
                result: OrderResult = await outcome
        except TimeoutError:
            raise TimeoutError(
                f"workflow {workflow_id} did not finish within {wait:g}s; "
                f"it stays running in {where}"
            ) from None
        finally:
            payment.cancel()
            outcome.cancel()
        stage = str(await ex.query(workflow_id, "stage"))
        print(f"Finished  status {result.status!r}; query 'stage' -> {stage!r}", file=out)

        state = await ex.store.load(workflow_id)
        history = state.history if state is not None else []
        print(f"\nHistory of {workflow_id} ({len(history)} events)", file=out)
        print(render_history(history), file=out)

        print("\nResult", file=out)
        fields = result.model_dump()
        width = max(len(name) for name in fields)
        for name, value in fields.items():
            print(f"  {name.ljust(width)}  {_plain(value)}", file=out)
    return DemoRun(workflow_id=workflow_id, result=result, stage=stage, db_path=where)
