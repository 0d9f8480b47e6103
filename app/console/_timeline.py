"""A run's timeline as SVG: one bar per activity attempt and timer, over time.

An attempt's bar runs from its ``activity_started`` to its result (green:
completed, red: failed, then retried; blue: still running); a timer's from
when it was set to when it fired (its ``duration`` before ``timer_fired``);
signals and other inputs are ticks on the top row.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.workflow import EventType, HistoryEvent
from app.workflow._types import TERMINAL_EVENTS

WIDTH = 900
LABEL = 220
ROW = 18
_COLORS = {"completed": "#34a853", "failed": "#ea4335", "running": "#4285f4", "timer": "#fbbc04"}
_TICKS = (
    EventType.SIGNAL_RECEIVED,
    EventType.UPDATE_ACCEPTED,
    EventType.CANCEL_REQUESTED,
    EventType.WORKFLOW_PAUSED,
    EventType.WORKFLOW_RESUMED,
)


@dataclass
class Bar:
    """One row of the timeline."""

    label: str
    start: float
    end: float
    kind: str


def bars(history: Sequence[HistoryEvent], now: float) -> list[Bar]:
    """The timeline's rows, in the order their bars start."""
    out: list[Bar] = []
    open_attempts: dict[tuple[int | None, int | None], Bar] = {}
    for event in history:
        at = _epoch(event.timestamp)
        if event.type is EventType.ACTIVITY_STARTED:
            bar = Bar(f"{event.activity_name} #{event.step}.{event.attempt}", at, now, "running")
            open_attempts[(event.step, event.attempt)] = bar
            out.append(bar)
        elif event.type in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED):
            done = open_attempts.pop((event.step, event.attempt), None)
            if done is not None:
                done.end = at
                done.kind = "completed" if event.type is EventType.ACTIVITY_COMPLETED else "failed"
        elif event.type is EventType.TIMER_FIRED and event.duration is not None and event.step:
            out.append(
                Bar(f"timer #{event.step} ({event.duration:g}s)", at - event.duration, at, "timer")
            )
    if history and history[-1].type in TERMINAL_EVENTS:
        for bar in open_attempts.values():  # the run ended with them unfinished
            bar.end = _epoch(history[-1].timestamp)
    out.sort(key=lambda b: b.start)
    return out


def timeline_svg(history: Sequence[HistoryEvent]) -> str:
    """The SVG of a run's timeline (an empty note when nothing ran yet)."""
    if not history:
        return "<p>No events yet.</p>"
    now = time.time()
    rows = bars(history, now)
    begin = _epoch(history[0].timestamp)
    ended = history[-1].type in TERMINAL_EVENTS
    finish = max([_epoch(history[-1].timestamp) if ended else now, *(b.end for b in rows)])
    span = max(finish - begin, 1e-3)
    scale = (WIDTH - LABEL - 10) / span
    ticks = [e for e in history if e.type in _TICKS]
    height = ROW * (len(rows) + 2) + 20
    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="timeline">'
        f'<text x="4" y="14" font-size="11">inputs</text>'
    ]
    for event in ticks:
        x = LABEL + (_epoch(event.timestamp) - begin) * scale
        parts.append(
            f'<line class="tick" data-event="{event.type.value}" x1="{x:.1f}" x2="{x:.1f}" '
            f'y1="4" y2="{ROW}" stroke="#555"><title>{html.escape(_tick(event))}</title></line>'
        )
    for i, bar in enumerate(rows, start=1):
        y = ROW * i + 4
        x = LABEL + (bar.start - begin) * scale
        w = max((bar.end - bar.start) * scale, 2.0)
        label = html.escape(bar.label)
        parts.append(
            f'<text x="4" y="{y + 11}" font-size="11">{label}</text>'
            f'<rect class="bar" data-kind="{bar.kind}" x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{ROW - 5}" fill="{_COLORS[bar.kind]}"><title>{label}: {bar.kind}, '
            f"{bar.end - bar.start:.3f}s</title></rect>"
        )
    axis_y = ROW * (len(rows) + 1) + 14
    parts.append(
        f'<text x="{LABEL}" y="{axis_y}" font-size="10">0 s</text>'
        f'<text x="{WIDTH - 60}" y="{axis_y}" font-size="10">{span:.3f} s</text></svg>'
    )
    return "".join(parts)


def _tick(event: HistoryEvent) -> str:
    name = event.signal_name or event.reason or ""
    return f"{event.type.value} {name}".strip()


def _epoch(moment: datetime) -> float:
    return moment.timestamp()
