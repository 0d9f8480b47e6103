"""Hooks, middleware, tracing, the provider registry and the activity helpers."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.workflow import (
    ActivityError,
    Config,
    DurableExecutor,
    Hooks,
    InteractionRequest,
    InvalidArgumentError,
    ProviderRegistry,
    Signal,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowOptions,
    apply_middleware,
    compose_hooks,
    human_activity,
    list_providers,
    llm_activity,
    new,
    register,
    tool_activity,
    with_hooks,
    with_tracing,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal


async def test_hooks_fire_in_order_once_per_event(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.wait_after_ready, WorkflowOptions(id="h", input="x"))
        await recorder.wait_for("activity_complete", "h")
        await signal(ex, "h", "go", "ok")
        assert await handle.result(timeout=WAIT) == "ok"
        handle = await ex.execute(wf.retry_exhausted, WorkflowOptions(id="hf", input=1))
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=WAIT)
    assert recorder.names("h") == [
        "workflow_start",
        "activity_start",
        "activity_complete",
        "signal",
        "workflow_complete",
    ]
    assert recorder.names("hf") == [
        "workflow_start",
        "activity_start",
        "retry",
        "activity_start",
        "retry",
        "activity_start",
        "workflow_fail",
    ]
    fail = next(v for n, w, v in recorder.calls if n == "workflow_fail" and w == "hf")
    assert isinstance(fail, WorkflowFailedError)
    assert isinstance(fail.__cause__, ActivityError)


async def test_raising_and_async_hooks_never_break_a_workflow(runtime: Runtime) -> None:
    seen: list[str] = []

    def explode(workflow_id: str, value: Any) -> None:
        raise RuntimeError("hook bug")

    async def note(workflow_id: str, value: Any) -> None:
        seen.append(f"async:{value}")

    hooks = compose_hooks(
        Hooks(on_activity_complete=explode, on_workflow_complete=explode),
        Hooks(on_activity_complete=note),
        Hooks(on_activity_complete=lambda w, v: seen.append(f"sync:{v}")),
    )
    async with runtime.open(hooks=hooks) as ex:
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="hb", input=1))
        assert await handle.result(timeout=WAIT) == [2, 4, 8]
    assert seen == ["async:2", "sync:2", "async:4", "sync:4", "async:8", "sync:8"]


async def test_hooks_do_not_fire_again_on_replay(restartable: Runtime, recorder: Recorder) -> None:
    async with restartable.open(hooks=recorder.hooks()) as ex:
        await ex.execute(wf.wait_after_ready, WorkflowOptions(id="hr", input="x"))
        await recorder.wait_for("activity_complete", "hr")
    before = list(recorder.calls)
    async with restartable.open(hooks=recorder.hooks()) as ex:
        await signal(ex, "hr", "go", 1)
        assert await ex.get_handle("hr").result(timeout=WAIT) == 1
    assert [c[0] for c in recorder.calls[len(before) :]] == ["signal", "workflow_complete"]


class _Tag:
    """A middleware that records which wrapper saw each call, in order."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def __call__(self, inner: DurableExecutor) -> DurableExecutor:
        tag = self

        class Tagged:
            async def execute(self, fn: Any, options: WorkflowOptions) -> Any:
                tag.log.append(f"{tag.name}:execute")
                return await inner.execute(fn, options)

            async def signal(self, workflow_id: str, sig: Signal) -> None:
                tag.log.append(f"{tag.name}:signal")
                await inner.signal(workflow_id, sig)

            async def query(self, workflow_id: str, query_type: str) -> Any:
                tag.log.append(f"{tag.name}:query")
                return await inner.query(workflow_id, query_type)

            async def cancel(self, workflow_id: str) -> None:
                tag.log.append(f"{tag.name}:cancel")
                await inner.cancel(workflow_id)

        return Tagged()


async def test_middleware_order_and_with_hooks(runtime: Runtime) -> None:
    log: list[str] = []
    outside = Recorder()
    async with runtime.open() as ex:
        wrapped = apply_middleware(
            ex, _Tag("outer", log), with_hooks(outside.hooks()), _Tag("inner", log)
        )
        handle = await wrapped.execute(wf.wait_after_ready, WorkflowOptions(id="mw", input="a"))
        await wrapped.signal("mw", Signal("go", 5))
        assert await handle.result(timeout=WAIT) == 5
        assert await handle.result(timeout=WAIT) == 5  # hooks fire once
        assert await wrapped.query("mw", "result") == 5
    assert log == [
        "outer:execute",
        "inner:execute",
        "outer:signal",
        "inner:signal",
        "outer:query",
        "inner:query",
    ]
    assert outside.names("mw") == ["workflow_start", "signal", "workflow_complete"]


async def test_with_tracing_records_spans_and_errors(runtime: Runtime) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with runtime.open() as ex:
        traced = apply_middleware(ex, with_tracing(provider))
        handle = await traced.execute(wf.wait_after_ready, WorkflowOptions(id="tr", input="a"))
        await traced.signal("tr", Signal("go", 1))
        await handle.result(timeout=WAIT)
        await traced.query("tr", "status")
        with pytest.raises(WorkflowNotFoundError):
            await traced.cancel("tr")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {
        "workflow.execute",
        "workflow.signal",
        "workflow.query",
        "workflow.cancel",
    }
    assert all(s.attributes and s.attributes["workflow.id"] == "tr" for s in spans.values())
    failed = spans["workflow.cancel"]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    assert spans["workflow.execute"].status.status_code is not StatusCode.ERROR


async def test_registry(embedded: Runtime) -> None:
    assert "default" in list_providers()
    executor = new("default", Config(store=embedded.store(), extra={"workflows": wf.workflows}))
    async with executor as ex:  # type: ignore[attr-defined]
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="reg", input=2))
        assert await handle.result(timeout=WAIT) == [4, 8, 16]
    with pytest.raises(InvalidArgumentError, match="default"):
        new("no-such-provider")
    with pytest.raises(InvalidArgumentError, match=r"unknown Config\.extra"):
        new("default", Config(extra={"bogus": 1}))
    registry = ProviderRegistry()
    built: list[Config] = []

    def factory(config: Config) -> DurableExecutor:
        built.append(config)
        return new("default", config)

    registry.register("mine", factory)
    assert registry.list_providers() == ["mine"]
    registry.new("mine", Config(extra={"workflows": []}))
    assert len(built) == 1
    register("conformance-test", factory)
    assert "conformance-test" in list_providers()
    with pytest.raises(InvalidArgumentError):
        register("", factory)


# -- activity helpers ------------------------------------------------------------
def _echo_llm(prompt: str) -> str:
    return f"echo: {prompt}"


async def _tools(name: str, args: dict[str, Any]) -> Any:
    return {"tool": name, "sum": sum(args.values())}


class _Desk:
    def __init__(self) -> None:
        self.requests: list[InteractionRequest] = []

    async def request_interaction(self, request: InteractionRequest) -> dict[str, Any]:
        self.requests.append(request)
        return {"approved": True, "prompt": request.prompt}


LLM = llm_activity(_echo_llm)
TOOL = tool_activity(_tools)
DESK = _Desk()
HUMAN = human_activity(DESK)


async def helpers_workflow(ctx: WorkflowContext, bad: bool) -> dict[str, Any]:
    if bad:
        return {
            "llm": await _error(ctx, LLM, 42),
            "tool": await _error(ctx, TOOL, {"args": {}}),
            "tool_args": await _error(ctx, TOOL, {"name": "x", "args": [1]}),
            "human": await _error(ctx, HUMAN, "approve?"),
        }
    return {
        "llm": await ctx.execute_activity(LLM, "hi"),
        "tool": await ctx.execute_activity(TOOL, {"name": "add", "args": {"a": 1, "b": 2}}),
        "human": await ctx.execute_activity(HUMAN, {"prompt": "ship it?", "options": ["y"]}),
    }


async def _error(ctx: WorkflowContext, fn: Any, value: Any) -> str:
    try:
        await ctx.execute_activity(fn, value)
    except ActivityError as err:
        assert err.attempts == 1  # input errors are not retried
        return str(err.__cause__)
    return "no error"


async def test_activity_helpers(runtime: Runtime) -> None:
    async with runtime.open(workflows=[helpers_workflow], activities=[LLM, TOOL, HUMAN]) as ex:
        ok = await ex.execute(helpers_workflow, WorkflowOptions(id="helpers", input=False))
        assert await ok.result(timeout=WAIT) == {
            "llm": "echo: hi",
            "tool": {"tool": "add", "sum": 3},
            "human": {"approved": True, "prompt": "ship it?"},
        }
        bad = await ex.execute(helpers_workflow, WorkflowOptions(id="helpers-bad", input=True))
        errors = await bad.result(timeout=WAIT)
    assert DESK.requests[-1].options == ["y"]
    assert "expected a str prompt" in errors["llm"]
    assert "missing 'name'" in errors["tool"]
    assert "'args' must be a mapping" in errors["tool_args"]
    assert "expected an InteractionRequest" in errors["human"]
    with pytest.raises(InvalidArgumentError):
        llm_activity("not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        human_activity(object())  # type: ignore[arg-type]


# -- the durable human-in-the-loop pattern ----------------------------------------
NOTIFIED: list[dict[str, Any]] = []


def notify_reviewer(request: dict[str, Any]) -> str:
    NOTIFIED.append(request)
    return "notified"


async def approval_workflow(ctx: WorkflowContext, request: dict[str, Any]) -> str:
    await ctx.execute_activity(notify_reviewer, request)
    try:
        decision = await ctx.receive_signal("decision").receive(timeout=request["wait"])
    except TimeoutError:
        return "escalated"
    return f"decided: {decision}"


async def test_human_in_the_loop_survives_restart(restartable: Runtime) -> None:
    NOTIFIED.clear()
    kw = {"workflows": [approval_workflow], "activities": [notify_reviewer]}
    recorder = Recorder()
    async with restartable.open(hooks=recorder.hooks(), **kw) as ex:
        await ex.execute(approval_workflow, WorkflowOptions(id="hitl", input={"wait": 60}))
        await ex.execute(approval_workflow, WorkflowOptions(id="hitl-late", input={"wait": 0.2}))
        # both notified before the stop: an attempt the stop cuts short would run
        # again only after its heartbeat timeout, which is not what this tests
        await recorder.wait_for("activity_complete", "hitl", timeout=WAIT)
        await recorder.wait_for("activity_complete", "hitl-late", timeout=WAIT)
    async with restartable.open(**kw) as ex:  # the reviewer answers after a restart
        await signal(ex, "hitl", "decision", "approved")
        assert await ex.get_handle("hitl").result(timeout=WAIT) == "decided: approved"
        assert await ex.get_handle("hitl-late").result(timeout=WAIT) == "escalated"
    assert [r["wait"] for r in NOTIFIED].count(60) == 1  # notified once, not again on replay


async def test_a_hook_may_call_the_executor(runtime: Runtime) -> None:
    executors: list[Any] = []
    stages: list[Any] = []

    async def approve_when_ready(workflow_id: str, result: Any) -> None:
        # the hook runs after the step is applied: a query sees it, a signal goes through
        stages.append(await executors[0].query(workflow_id, "status"))
        await executors[0].signal(workflow_id, Signal("go", f"from hook {result}"))

    async with runtime.open(hooks=Hooks(on_activity_complete=approve_when_ready)) as ex:
        executors.append(ex)
        handle = await ex.execute(wf.wait_after_ready, WorkflowOptions(id="hook-calls", input="r"))
        assert await handle.result(timeout=WAIT) == "from hook r"
    assert stages == ["running"]
