"""Visibility: workflow headers without histories, filtered and paged.

A workflow's *search attributes* are set at start
(``WorkflowOptions(search_attributes=...)``) and by the code
(``ctx.upsert_search_attributes``); both are history events
(``workflow_started`` and ``search_attributes_upserted``), so every store and
every downstream reader of the history derives the same values. The *memo*
is descriptive data given at start, shown but not searchable.

:func:`summarize` derives a :class:`WorkflowSummary` from a state;
:class:`Summarizer` keeps one up to date event by event (for readers of a
history stream). Stores with an index answer :class:`WorkflowQuery` in it;
:func:`page_of` is the scan every other store falls back on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from ._errors import InvalidArgumentError, WorkflowError
from ._types import (
    TERMINAL_STATUS,
    EventType,
    HistoryEvent,
    WorkflowState,
    WorkflowStatus,
    status_arg,
)

SearchValue = str | int | float | bool
"""A search attribute's value (a :class:`datetime` is kept as ISO-8601 text in UTC)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
MAX_ATTRIBUTES = 64
MAX_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def time_key(moment: datetime) -> int:
    """Microseconds since the epoch: the sort key of a start or close time."""
    delta = _utc(moment) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def search_value(value: Any, what: str) -> SearchValue:
    """``value`` as stored: a str, int, float or bool (a datetime becomes UTC ISO text)."""
    if isinstance(value, datetime):
        return _utc(value).astimezone(UTC).isoformat()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return value
    raise InvalidArgumentError(
        f"{what} must be a str, int, float, bool or datetime, got {type(value).__name__} {value!r}"
    )


def search_attributes(
    value: Any, what: str, *, allow_unset: bool = False
) -> dict[str, SearchValue | None]:
    """Validate a mapping of search attributes (``allow_unset``: None removes one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{what} must be a mapping of name to value, got {value!r}")
    if len(value) > MAX_ATTRIBUTES:
        raise InvalidArgumentError(
            f"{what} holds {len(value)} attributes; at most {MAX_ATTRIBUTES} are allowed"
        )
    checked: dict[str, SearchValue | None] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgumentError(
                f"{what}: attribute name {name!r} must start with a letter or '_' and hold "
                "only letters, digits, '_', '.' or '-' (at most 128)"
            )
        if item is None and allow_unset:
            checked[name] = None
            continue
        checked[name] = search_value(item, f"{what}[{name!r}]")
    return checked


def memo(value: Any, what: str) -> dict[str, Any]:
    """Validate a memo: a mapping of str to JSON values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidArgumentError(f"{what} must be a mapping with str keys, got {value!r}")
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what} must hold JSON values only: {exc}") from None
    return dict(value)


def paused_reason(history: Sequence[HistoryEvent]) -> str | None:
    """The reason the run is paused for ("" if none was given), or None when it is not."""
    for event in reversed(history):
        if event.type is EventType.WORKFLOW_PAUSED:
            return event.reason or ""
        if event.type is EventType.WORKFLOW_RESUMED:
            return None
    return None


def refuse_pause_change(state: WorkflowState, kind: EventType) -> None:
    """Raise unless ``kind`` (pause or resume) changes whether the run is paused."""
    paused = paused_reason(state.history) is not None
    if kind is EventType.WORKFLOW_PAUSED and paused:
        raise WorkflowError(f"workflow {state.workflow_id!r} is already paused")
    if kind is EventType.WORKFLOW_RESUMED and not paused:
        raise WorkflowError(f"workflow {state.workflow_id!r} is not paused")


def started_template(options: Any, now: datetime) -> HistoryEvent | None:
    """A ``workflow_started`` holding ``options``' search attributes and memo (None: none)."""
    if not options.search_attributes and not options.memo:
        return None
    return HistoryEvent(
        id=1,
        type=EventType.WORKFLOW_STARTED,
        timestamp=now,
        search_attributes=dict(options.search_attributes or {}) or None,
        memo=dict(options.memo or {}) or None,
    )


@dataclass(frozen=True)
class WorkflowSummary:
    """A workflow's header: what ``executor.list`` returns, with no history."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: WorkflowStatus
    started_at: datetime
    closed_at: datetime | None
    history_length: int
    search_attributes: dict[str, SearchValue] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowPage:
    """One page of :meth:`list`; pass ``next_cursor`` back for the next (None: the last)."""

    items: list[WorkflowSummary]
    next_cursor: str | None = None


def _moment(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{what} must be a datetime, got {value!r}")
    return _utc(value)


@dataclass(frozen=True)
class WorkflowQuery:
    """What :meth:`list` selects; newest start first, ``page_size`` at a time.

    Every given field must match: the type, the status, start and close times
    (``*_after`` inclusive, ``*_before`` exclusive) and each search attribute
    by equality. ``cursor`` is a page's ``next_cursor``.
    """

    workflow_type: str | None = None
    status: WorkflowStatus | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    closed_after: datetime | None = None
    closed_before: datetime | None = None
    search_attributes: Mapping[str, Any] = field(default_factory=dict)
    page_size: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.workflow_type is not None and (
            not isinstance(self.workflow_type, str) or not self.workflow_type
        ):
            raise InvalidArgumentError(
                f"WorkflowQuery.workflow_type must be a non-empty str, got {self.workflow_type!r}"
            )
        object.__setattr__(self, "status", status_arg(self.status, "WorkflowQuery.status"))
        for name in ("started_after", "started_before", "closed_after", "closed_before"):
            object.__setattr__(self, name, _moment(getattr(self, name), f"WorkflowQuery.{name}"))
        attrs = search_attributes(self.search_attributes, "WorkflowQuery.search_attributes")
        object.__setattr__(self, "search_attributes", attrs)
        size = self.page_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgumentError(
                f"WorkflowQuery.page_size must be an int from 1 to {MAX_PAGE_SIZE}, got {size!r}"
            )
        if self.cursor is not None:
            decode_cursor(self.cursor)

    @property
    def closed_range(self) -> bool:
        """Whether a close time is asked for (running workflows then never match)."""
        return self.closed_after is not None or self.closed_before is not None


def encode_cursor(summary: WorkflowSummary) -> str:
    """The cursor that continues after ``summary`` (its start time key and id)."""
    raw = json.dumps([time_key(summary.started_at), summary.workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(start time key, workflow id) of a cursor; a bad one raises InvalidArgumentError."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, wid = json.loads(raw)
        if isinstance(key, int) and not isinstance(key, bool) and isinstance(wid, str):
            return key, wid
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise InvalidArgumentError(f"WorkflowQuery.cursor {cursor!r} is not a cursor from a page")


class Summarizer:
    """A workflow's summary, kept up to date from its history events in order."""

    def __init__(self, workflow_id: str, run_id: str, workflow_type: str) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type
        self.status = WorkflowStatus.RUNNING
        self.started_at: datetime | None = None
        self.closed_at: datetime | None = None
        self.history_length = 0
        self.attributes: dict[str, SearchValue] = {}
        self.memo: dict[str, Any] = {}

    def apply(self, event: HistoryEvent) -> None:
        """Take ``event`` (the next of this run) into the summary."""
        self.history_length = max(self.history_length, event.id)
        kind = event.type
        if kind is EventType.WORKFLOW_STARTED:
            self.started_at = event.timestamp
            self.memo = dict(event.memo or {})
            self.attributes = {}
        if event.search_attributes:
            merge_attributes(self.attributes, event.search_attributes)
        status = TERMINAL_STATUS.get(kind)
        if status is not None:
            self.status = status
            self.closed_at = event.timestamp

    def summary(self, fallback_start: datetime | None = None) -> WorkflowSummary:
        """The summary so far (``fallback_start`` when no ``workflow_started`` was seen)."""
        started = self.started_at or fallback_start or _EPOCH
        return WorkflowSummary(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            workflow_type=self.workflow_type,
            status=self.status,
            started_at=started,
            closed_at=self.closed_at,
            history_length=self.history_length,
            search_attributes=dict(self.attributes),
            memo=dict(self.memo),
        )


def merge_attributes(
    attributes: dict[str, SearchValue], changes: Mapping[str, SearchValue | None]
) -> None:
    """Apply an upsert: set each value, remove each attribute given as None."""
    for name, value in changes.items():
        if value is None:
            attributes.pop(name, None)
        else:
            attributes[name] = value


def summarize(state: WorkflowState) -> WorkflowSummary:
    """The header of a stored state (its status from the state, the rest from history)."""
    summarizer = Summarizer(state.workflow_id, state.run_id, state.workflow_type)
    for event in state.history:
        if event.type is EventType.WORKFLOW_STARTED or event.search_attributes:
            summarizer.apply(event)
    summarizer.history_length = len(state.history)
    summarizer.status = WorkflowStatus(state.status)
    if summarizer.status is not WorkflowStatus.RUNNING:
        summarizer.closed_at = state.history[-1].timestamp if state.history else state.updated_at
    return summarizer.summary(state.created_at)


def matches(summary: WorkflowSummary, query: WorkflowQuery) -> bool:
    """Whether ``summary`` is selected by ``query`` (ignoring its cursor)."""
    if query.workflow_type is not None and summary.workflow_type != query.workflow_type:
        return False
    if query.status is not None and summary.status is not query.status:
        return False
    if not _within(summary.started_at, query.started_after, query.started_before):
        return False
    if query.closed_range and (
        summary.closed_at is None
        or not _within(summary.closed_at, query.closed_after, query.closed_before)
    ):
        return False
    attrs = summary.search_attributes
    return all(_same(attrs.get(k), v) for k, v in query.search_attributes.items())


def _within(moment: datetime, after: datetime | None, before: datetime | None) -> bool:
    """Whether ``moment`` is in ``[after, before)`` (an open end when None)."""
    key = time_key(moment)
    return (after is None or key >= time_key(after)) and (before is None or key < time_key(before))


def _same(stored: Any, wanted: Any) -> bool:
    # True must not match 1: the type is part of the value
    return stored is not None and type(stored) is type(wanted) and stored == wanted


def page_of(summaries: Iterable[WorkflowSummary], query: WorkflowQuery) -> WorkflowPage:
    """The page of ``query`` from a full scan: what a store without an index does."""
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    selected = [s for s in summaries if matches(s, query)]
    selected.sort(key=lambda s: (time_key(s.started_at), s.workflow_id), reverse=True)
    if after is not None:
        selected = [s for s in selected if (time_key(s.started_at), s.workflow_id) < after]
    items = selected[: query.page_size]
    more = len(selected) > query.page_size
    return WorkflowPage(items, encode_cursor(items[-1]) if more else None)


@runtime_checkable
class VisibilityStore(Protocol):
    """A store that answers :class:`WorkflowQuery` itself (from an index)."""

    async def list_workflows(self, query: WorkflowQuery) -> WorkflowPage: ...


async def list_workflows(store: Any, query: WorkflowQuery) -> WorkflowPage:
    """``query`` against ``store``: its own index, or a scan of every state it holds."""
    if not isinstance(query, WorkflowQuery):
        raise InvalidArgumentError(f"query must be a WorkflowQuery, got {type(query).__name__}")
    if isinstance(store, VisibilityStore):
        return await store.list_workflows(query)
    from ._types import WorkflowFilter

    states = await store.list(WorkflowFilter(status=query.status))
    return page_of((summarize(s) for s in states), query)


async def status_counts(store: Any) -> dict[WorkflowStatus, int]:
    """How many workflows ``store`` holds in each status: its own count, or a scan."""
    counts = getattr(store, "status_counts", None)
    if counts is not None:
        result: dict[WorkflowStatus, int] = await counts()
        return result
    from ._types import WorkflowFilter

    out: dict[WorkflowStatus, int] = {}
    for state in await store.list(WorkflowFilter()):
        status = WorkflowStatus(state.status)
        out[status] = out.get(status, 0) + 1
    return out
