"""The console's HTML, rendered on the server: a list page and a workflow page.

No template engine and no build step: small functions return escaped HTML.
Every value that came from a workflow goes through :func:`esc`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from app.workflow import (
    FailureInfo,
    HistoryEvent,
    WorkflowPage,
    WorkflowState,
    WorkflowStatus,
    WorkflowSummary,
)
from app.workflow._visibility import paused_reason, summarize

from ._backend import Details
from ._timeline import timeline_svg

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:baseline}
header a{color:#fff;font-weight:600;text-decoration:none}header span{opacity:.7}
main{padding:1em;max-width:1200px}table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600}code,pre{font:12px ui-monospace,monospace}
pre{white-space:pre-wrap;margin:0}.s-running{color:#0b6bcb}.s-completed{color:#137333}
.s-failed{color:#c5221f}.s-canceled{color:#8a5a00}.s-continued_as_new{color:#6b45c4}
.counts a{margin-right:1em}form.inline{display:inline-block;margin:0 .5em .5em 0}
fieldset{border:1px solid #d5d9de;background:#fff;margin:0 0 1em}dl{display:grid;
grid-template-columns:max-content 1fr;gap:.2em 1em;background:#fff;padding:.6em;margin:0 0 1em}
dt{font-weight:600}.msg{padding:.5em;background:#fff7d6;border:1px solid #e8d27a;margin-bottom:1em}
.err{background:#fde8e7;border-color:#f1a7a3}.paused{color:#8a5a00;font-weight:600}
"""

LIVE_SCRIPT = """
const live = document.getElementById('live');
if (live && window.EventSource) {
  const source = new EventSource(live.dataset.stream);
  source.addEventListener('change', async () => {
    const response = await fetch(live.dataset.fragment, {credentials: 'same-origin'});
    if (response.ok) { live.innerHTML = await response.text(); }
    // a run that has ended takes no more actions: drop the buttons drawn for it
    const actions = document.getElementById('actions');
    if (actions && !live.querySelector('#status .s-running')) { actions.remove(); }
  });
}
"""


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML."""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, default=str, ensure_ascii=False)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def wf_link(workflow_id: str) -> str:
    return f'<a href="/workflows/{quote(workflow_id, safe="")}">{esc(workflow_id)}</a>'


def layout(title: str, where: str, body: str, *, script: str = "") -> str:
    tail = f"<script>{script}</script>" if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} · streamflow</title><style>{STYLE}</style></head><body>"
        f'<header><a href="/">streamflow</a><a href="/schedules">schedules</a>'
        f"<span>{esc(where)}</span></header>"
        f"<main>{body}</main>{tail}</body></html>"
    )


def _status(status: WorkflowStatus) -> str:
    return f'<span class="s-{status.value}">{esc(status.value)}</span>'


def _attrs(attributes: Mapping[str, Any]) -> str:
    return " ".join(
        f"<code>{esc(k)}={esc(json.dumps(v))}</code>" for k, v in sorted(attributes.items())
    )


# -- list -------------------------------------------------------------------------
def list_page(
    page: WorkflowPage,
    counts: Mapping[WorkflowStatus, int],
    filters: Mapping[str, str],
    where: str,
    message: str = "",
) -> str:
    total = sum(counts.values())
    count_links = " ".join(
        f'<a href="/?{urlencode({"status": s.value})}">{esc(s.value)}: {n}</a>'
        for s, n in sorted(counts.items())
    )
    options = "".join(
        f'<option value="{s.value}"{" selected" if filters.get("status") == s.value else ""}>'
        f"{s.value}</option>"
        for s in WorkflowStatus
    )
    form = (
        '<form method=get action="/" id="filters">'
        f'<label>Status <select name=status><option value="">any</option>{options}</select>'
        "</label> "
        f'<label>Type <input name=type value="{esc(filters.get("type", ""))}" size=14></label> '
        '<label>Search attributes <input name=attrs placeholder="customer=acme tier=gold" '
        f'value="{esc(filters.get("attrs", ""))}" size=30></label> '
        "<button type=submit>Filter</button></form>"
    )
    rows = "".join(_row(s) for s in page.items) or "<tr><td colspan=8>No workflows.</td></tr>"
    more = ""
    if page.next_cursor:
        query = {k: v for k, v in filters.items() if v} | {"cursor": page.next_cursor}
        more = f'<p><a id="next" href="/?{urlencode(query)}">Next page</a></p>'
    note = f'<div class="msg err">{esc(message)}</div>' if message else ""
    body = (
        f'{note}<p class="counts">{total} workflows. {count_links}</p>{form}'
        "<table id=workflows><thead><tr><th>Workflow</th><th>Type</th><th>Status</th>"
        "<th>Run</th><th>Started</th><th>Closed</th><th>Events</th><th>Search attributes</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>{more}"
    )
    return layout("Workflows", where, body)


def _row(s: WorkflowSummary) -> str:
    return (
        f'<tr data-workflow-id="{esc(s.workflow_id)}"><td>{wf_link(s.workflow_id)}</td>'
        f"<td>{esc(s.workflow_type)}</td><td>{_status(s.status)}</td>"
        f"<td><code>{esc(s.run_id[:12])}</code></td><td>{_when(s.started_at)}</td>"
        f"<td>{_when(s.closed_at)}</td><td>{s.history_length}</td>"
        f"<td>{_attrs(s.search_attributes)}</td></tr>"
    )


# -- one workflow -------------------------------------------------------------------
def workflow_page(
    details: Details, where: str, *, writable: bool, message: str = "", error: bool = False
) -> str:
    state = details.state
    wid = state.workflow_id
    base = f"/workflows/{quote(wid, safe='')}"
    note = f'<div class="msg{" err" if error else ""}" id="message">{esc(message)}</div>'
    body = (
        f"<h2>{esc(wid)}</h2>{note if message else ''}"
        f"{actions(state, base) if writable else ''}"
        f'<div id="live" data-stream="{base}/stream?seen={quote(live_version(state))}" '
        f'data-fragment="{base}/live">'
        f"{live_fragment(details)}</div>"
    )
    return layout(wid, where, body, script=LIVE_SCRIPT)


def live_version(state: WorkflowState) -> str:
    """What a live page shows of the run, as a token: it changes when the page would."""
    return f"{len(state.history)}.{state.status.value}"


def live_fragment(details: Details) -> str:
    """The part of a workflow page that follows the run as it goes."""
    state = details.state
    return (
        f"{_header(state)}{_waiting(details.waiting)}"
        f"<h3>Timeline</h3>{timeline_svg(state.history)}"
        f"<h3>History ({len(state.history)} events)</h3>{history_table(state.history)}"
    )


def _header(state: WorkflowState) -> str:
    summary = summarize(state)
    first = state.history[0] if state.history else None
    fields: list[tuple[str, str]] = [
        ("Run", f"<code>{esc(state.run_id)}</code>"),
        ("Type", esc(state.workflow_type)),
        ("Status", f'<span id="status">{_status(state.status)}</span>'),
    ]
    paused = paused_reason(state.history)
    if paused is not None and state.status is WorkflowStatus.RUNNING:
        fields.append(("Paused", f'<span class="paused">{esc(paused or "paused")}</span>'))
    if first is not None and first.parent_workflow_id:
        fields.append(("Parent", wf_link(first.parent_workflow_id)))
    if state.previous_run_ids:
        fields.append(("Previous runs", " → ".join(esc(r[:12]) for r in state.previous_run_ids)))
    fields += [
        ("Started", _when(summary.started_at)),
        ("Closed", _when(summary.closed_at)),
        ("Input", f"<pre>{esc(_json(state.input))}</pre>"),
    ]
    if state.result is not None:
        fields.append(("Result", f'<pre id="result">{esc(_json(state.result))}</pre>'))
    failure = _failure_of(state)
    if failure is not None:
        fields.append(("Failure", failure_html(failure)))
    elif state.error:
        fields.append(("Error", f"<pre>{esc(state.error)}</pre>"))
    fields.append(("Search attributes", _attrs(summary.search_attributes) or "-"))
    fields.append(("Memo", f"<pre>{esc(_json(summary.memo))}</pre>" if summary.memo else "-"))
    return "<dl id=header>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields) + "</dl>"


def _failure_of(state: WorkflowState) -> FailureInfo | None:
    if state.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELED) or not state.history:
        return None
    return state.history[-1].failure


def failure_html(failure: FailureInfo) -> str:
    """A failure and its causes, outermost first."""
    items = []
    current: FailureInfo | None = failure
    while current is not None:
        where = f" (activity {esc(current.activity_name)})" if current.activity_name else ""
        items.append(f"<li><b>{esc(current.type)}</b>{where}: {esc(current.message)}</li>")
        current = current.cause
    return f'<ol class="causes">{"".join(items)}</ol>'


def _waiting(waiting: Mapping[str, Any]) -> str:
    if not waiting:
        return ""
    lines = [
        f"<li>activity <b>{esc(a.get('activity'))}</b> step {esc(a.get('step'))} "
        f"attempt {esc(a.get('attempt'))}</li>"
        for a in waiting.get("activities", [])
    ]
    lines += [
        f"<li>timer ({esc(t.get('kind'))}) step {esc(t.get('step'))}, due "
        f"{_when(datetime.fromtimestamp(float(t['due']), UTC)) if t.get('due') else '-'}</li>"
        for t in waiting.get("timers", [])
    ]
    lines += [
        f"<li>child workflow {wf_link(c['workflow_id'])}</li>" for c in waiting.get("children", [])
    ]
    if not lines:
        return ""
    return f'<h3>Waiting on</h3><ul id="waiting">{"".join(lines)}</ul>'


def history_table(events: Sequence[HistoryEvent]) -> str:
    rows = "".join(
        f'<tr data-event="{esc(e.type.value)}"><td>{e.id}</td><td>{_when(e.timestamp)}</td>'
        f"<td>{esc(e.type.value)}</td><td>{'' if e.step is None else e.step}</td>"
        f"<td>{'' if e.attempt is None else e.attempt}</td><td>{_name(e)}</td>"
        f"<td><pre>{esc(_detail(e))}</pre></td></tr>"
        for e in events
    )
    return (
        "<table id=history><thead><tr><th>#</th><th>Time</th><th>Event</th><th>Step</th>"
        f"<th>Attempt</th><th>Name</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _name(event: HistoryEvent) -> str:
    if event.child_workflow_id:
        return wf_link(event.child_workflow_id)
    return esc(event.activity_name or event.signal_name or event.change_id or "")


def _detail(event: HistoryEvent) -> str:
    parts: Iterable[tuple[str, Any]] = (
        ("input", event.input),
        ("result", event.result),
        ("payload", event.signal_payload),
        ("error", event.error),
        ("attributes", event.search_attributes),
        ("reason", event.reason),
    )
    text = "; ".join(f"{k}: {_json(v) if not isinstance(v, str) else v}" for k, v in parts if v)
    return text if len(text) <= 300 else text[:297] + "..."


def actions(state: WorkflowState, base: str) -> str:
    if state.status is not WorkflowStatus.RUNNING:
        return ""
    paused = paused_reason(state.history) is not None
    toggle = "resume" if paused else "pause"
    return (
        "<fieldset id=actions><legend>Actions</legend>"
        f'<form class=inline method=post action="{base}/signal" id="signal-form">'
        '<input name=name placeholder="signal name" required size=12> '
        '<input name=payload placeholder="JSON payload" size=24> '
        "<button type=submit>Send signal</button></form>"
        f'<form class=inline method=post action="{base}/query" id="query-form">'
        '<input name=name placeholder="query name" required size=12> '
        "<button type=submit>Run query</button></form>"
        f'<form class=inline method=post action="{base}/{toggle}" id="{toggle}-form">'
        '<input name=reason placeholder="reason" size=14> '
        f"<button type=submit>{toggle.capitalize()}</button></form>"
        f'<form class=inline method=post action="{base}/cancel" id="cancel-form">'
        "<button type=submit>Cancel</button></form>"
        f'<form class=inline method=post action="{base}/terminate" id="terminate-form">'
        '<input name=reason placeholder="reason" size=14> '
        "<button type=submit>Terminate</button></form></fieldset>"
    )


def schedules_page(
    schedules: Sequence[Mapping[str, Any]], where: str, *, writable: bool, message: str = ""
) -> str:
    rows = []
    for sch in schedules:
        sid = str(sch.get("schedule_id", ""))
        spec = sch.get("spec", {})
        when = f"cron {spec['cron']}" if spec.get("cron") else f"every {spec.get('every', '?')} s"
        base = f"/schedules/{quote(sid, safe='')}"
        toggle = "resume" if sch.get("paused") else "pause"
        buttons = (
            "".join(
                f'<form class=inline method=post action="{base}/{op}">'
                f'<button type=submit name=op value="{op}">{op.capitalize()}</button></form>'
                for op in (toggle, "trigger", "delete")
            )
            if writable
            else ""
        )
        recent = "<br>".join(
            esc(r.get("workflow_id", "")) for r in sch.get("recent", [])[:3] if "why" in r
        )
        rows.append(
            f'<tr data-schedule-id="{esc(sid)}"><td>{esc(sid)}</td>'
            f"<td>{esc(spec.get('workflow', '?'))}</td><td>{esc(when)}</td>"
            f"<td>{esc(spec.get('overlap', ''))}</td>"
            f"<td>{'paused' if sch.get('paused') else 'active'}</td>"
            f"<td>{esc(sch.get('next_tick') or '-')}</td>"
            f"<td>{esc(sch.get('started', '-'))} / {esc(sch.get('skipped', '-'))}</td>"
            f"<td>{recent}</td><td>{buttons}</td></tr>"
        )
    note = f'<div class="msg" id="message">{esc(message)}</div>' if message else ""
    body = (
        f"<h2>Schedules</h2>{note}<table id=schedules><thead><tr><th>Schedule</th>"
        "<th>Workflow</th><th>When</th><th>Overlap</th><th>State</th><th>Next tick</th>"
        "<th>Started / skipped</th><th>Latest runs</th><th></th></tr></thead><tbody>"
        f"{''.join(rows) or '<tr><td colspan=9>No schedules.</td></tr>'}</tbody></table>"
    )
    return layout("Schedules", where, body)


def login_page(where: str, failed: bool) -> str:
    note = '<div class="msg err">That token is not right.</div>' if failed else ""
    body = (
        f"{note}<p>This console needs its access token.</p>"
        '<form method=get action="/" id="login"><input type=password name=token '
        'placeholder="token" autofocus> <button type=submit>Open</button></form>'
    )
    return layout("Token needed", where, body)
