"""Plain-text rendering of workflows and their histories for the command line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from app.workflow import EventType, HistoryEvent, WorkflowState, WorkflowSummary
from app.workflow._visibility import paused_reason, summarize

__all__ = [
    "DETAIL_WIDTH",
    "format_table",
    "format_value",
    "render_history",
    "render_state",
    "render_summaries",
    "render_waiting",
    "truncate",
]

DETAIL_WIDTH = 60
"""Longest detail cell of a history table, ellipsis included."""

_HEADER_VALUE_WIDTH = 200
_ELLIPSIS = "..."


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, marked when cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - len(_ELLIPSIS))] + _ELLIPSIS


def format_value(value: Any) -> str:
    """A payload as one line of compact JSON (strings quoted, like in the store)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # circular structure: never stored, but keep the CLI alive
        text = repr(value)
    return _one_line(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; column indexes in ``right`` align right."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_aligned = set(right)

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    rule = ["-" * w for w in widths]
    return "\n".join([line(headers), line(rule), *(line(row) for row in body)])


def _clock(moment: datetime) -> str:
    local = moment.astimezone()
    return f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"


def _date_time(moment: datetime) -> str:
    return f"{moment.astimezone():%Y-%m-%d %H:%M:%S}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _detail(event: HistoryEvent) -> str:
    kind = event.type
    if kind in (EventType.WORKFLOW_STARTED, EventType.ACTIVITY_STARTED):
        return format_value(event.input)
    if kind in (EventType.ACTIVITY_COMPLETED, EventType.WORKFLOW_COMPLETED):
        return format_value(event.result)
    if kind is EventType.SIGNAL_RECEIVED:
        sender = f"from {event.sender_id}: " if event.sender_id else ""
        return sender + format_value(event.signal_payload)
    if kind is EventType.TIMER_FIRED:
        return "" if event.duration is None else f"after {_seconds(event.duration)}"
    if kind is EventType.MARKER_RECORDED:
        return "patched: the run takes the new branch"
    if kind is EventType.SEARCH_ATTRIBUTES_UPSERTED:
        return _attributes(event.search_attributes or {})
    if kind in (EventType.WORKFLOW_PAUSED, EventType.WORKFLOW_RESUMED):
        return event.reason or ""
    if kind is EventType.WORKFLOW_RESET:
        return f"from run {event.change_id}" + (f": {event.reason}" if event.reason else "")
    if kind is EventType.UPDATE_ACCEPTED:
        return format_value(event.signal_payload)
    if kind is EventType.UPDATE_COMPLETED and event.error is None:
        return format_value(event.result)
    if kind is EventType.WORKFLOW_CONTINUED_AS_NEW:
        return f"as run {event.new_run_id or '?'}: {format_value(event.input)}"
    if kind is EventType.CHILD_WORKFLOW_STARTED:
        return f"{event.child_workflow_type or '?'}: {format_value(event.input)}"
    if kind is EventType.CHILD_WORKFLOW_COMPLETED:
        return format_value(event.result)
    if kind is EventType.CHILD_WORKFLOW_SIGNALED:
        return f"{event.signal_name or ''}: {format_value(event.signal_payload)}"
    if event.error is not None:
        return _one_line(event.error)
    return ""


def _name(event: HistoryEvent) -> str:
    if event.child_workflow_id is not None:
        return event.child_workflow_id
    if event.type in (EventType.UPDATE_ACCEPTED, EventType.UPDATE_COMPLETED):
        return f"{event.signal_name or ''} [{event.change_id or ''}]"
    return event.activity_name or event.signal_name or event.change_id or ""


def render_history(events: Sequence[HistoryEvent], *, detail_width: int = DETAIL_WIDTH) -> str:
    """A history as an aligned table: one row per event, in recorded order."""
    headers = ("ID", "TIME", "EVENT", "STEP", "ATTEMPT", "NAME", "DETAIL")
    rows = [
        (
            str(event.id),
            _clock(event.timestamp),
            event.type.value,
            "" if event.step is None else str(event.step),
            "" if event.attempt is None else str(event.attempt),
            _name(event),
            truncate(_detail(event), detail_width),
        )
        for event in events
    ]
    return format_table(headers, rows, right=(0, 3, 4))


def render_state(state: WorkflowState) -> str:
    """The header of a workflow (identity, status, input, outcome) as labelled lines."""
    fields: list[tuple[str, str]] = [
        ("Workflow", state.workflow_id),
        ("Run", state.run_id),
    ]
    previous = state.previous_run_ids
    if previous:
        # the continue-as-new chain, oldest first; this run continued the last one
        fields.append(("Previous runs", f"{len(previous)}: {' -> '.join(previous)}"))
    first = state.history[0] if state.history else None
    if first is not None and first.parent_workflow_id is not None:
        fields.append(
            ("Parent", f"{first.parent_workflow_id} (run {first.parent_run_id}, step {first.step})")
        )
    fields += [
        ("Type", state.workflow_type or "-"),
        ("Status", state.status.value),
        ("Created", _date_time(state.created_at)),
        ("Updated", _date_time(state.updated_at)),
        ("Input", truncate(format_value(state.input), _HEADER_VALUE_WIDTH)),
    ]
    paused = paused_reason(state.history)
    if paused is not None and state.status.value == "running":
        fields.append(("Paused", paused or "(no reason given)"))
    summary = summarize(state)
    if summary.search_attributes:
        fields.append(
            ("Search", truncate(_attributes(summary.search_attributes), _HEADER_VALUE_WIDTH))
        )
    if summary.memo:
        fields.append(("Memo", truncate(format_value(summary.memo), _HEADER_VALUE_WIDTH)))
    if state.result is not None:
        fields.append(("Result", truncate(format_value(state.result), _HEADER_VALUE_WIDTH)))
    if state.error is not None:
        fields.append(("Error", truncate(_one_line(state.error), _HEADER_VALUE_WIDTH)))
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in fields)


def _attributes(attributes: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(attributes.items()))


def render_summaries(items: Sequence[WorkflowSummary]) -> str:
    """One aligned row per workflow header: id, type, status, run, times, events, attributes."""
    headers = ("WORKFLOW ID", "TYPE", "STATUS", "RUN ID", "STARTED", "CLOSED", "EVENTS", "SEARCH")
    rows = [
        (
            s.workflow_id,
            s.workflow_type or "-",
            s.status.value,
            s.run_id[:12],
            _date_time(s.started_at),
            _date_time(s.closed_at) if s.closed_at is not None else "-",
            str(s.history_length),
            truncate(_attributes(s.search_attributes), DETAIL_WIDTH) or "-",
        )
        for s in items
    ]
    return format_table(headers, rows, right=(6,))


def _moment(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "unknown"
    stamp = datetime.fromtimestamp(epoch).astimezone().strftime("%H:%M:%S.%f")[:-3]
    delta = now - epoch
    return f"{stamp} ({delta:.1f}s ago)" if delta >= 0 else f"{stamp} (in {-delta:.1f}s)"


def render_waiting(waiting: dict[str, Any], now: float) -> str:
    """What a running workflow waits on (the owner's answer to ``describe``), as lines."""
    lines = [f"Waiting on (owner: partition {waiting.get('partition')})"]
    for act in waiting.get("activities", []):
        line = (
            f"  activity {act['activity']!r} step {act['step']} attempt {act['attempt']}: "
            f"started {_moment(act.get('started'), now)}"
        )
        if act.get("inherited"):
            line += "; run by the previous generation's activity workers"
        else:
            line += f", task sent {_moment(act.get('dispatched'), now)}"
            if act.get("redrives"):
                line += f", sent again {act['redrives']} time(s)"
        lines.append(line)
    for child in waiting.get("children", []):
        line = (
            f"  child workflow {child['workflow_id']!r} ({child['type']}) step {child['step']} "
            f"attempt {child['attempt']}"
        )
        if child.get("backing_off"):
            line += ": failed, waiting out its retry backoff"
        else:
            line += f": start sent {_moment(child.get('dispatched'), now)}"
            if child.get("redrives"):
                line += f", sent again {child['redrives']} time(s)"
        lines.append(line)
    for act in waiting.get("backing_off", []):
        lines.append(
            f"  retry of activity {act['activity']!r} step {act['step']} after attempt "
            f"{act['attempt']} failed"
        )
    for timer in waiting.get("timers", []):
        what = timer["kind"]
        if timer.get("activity"):
            what += f" of activity {timer['activity']!r}"
        lines.append(f"  timer at step {timer['step']} ({what}): due {_moment(timer['due'], now)}")
    for name in waiting.get("signals", []):
        lines.append(f"  signal {name!r}")
    if len(lines) == 1:
        lines.append("  nothing (it is parked, or its next step is being applied)")
    return "\n".join(lines)
