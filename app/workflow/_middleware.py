"""Middleware: wrappers that add behaviour around any :class:`DurableExecutor`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from ._errors import WorkflowCanceledError, WorkflowFailedError
from ._executor import DurableExecutor, WorkflowHandle
from ._hooks import Hooks, call_hook
from ._types import Duration, Signal, WorkflowOptions, WorkflowStatus

Middleware = Callable[[DurableExecutor], DurableExecutor]


def apply_middleware(executor: DurableExecutor, *middlewares: Middleware) -> DurableExecutor:
    """Wrap ``executor``; the first middleware is the outermost (runs first)."""
    for middleware in reversed(middlewares):
        executor = middleware(executor)
    return executor


class _Wrapper:
    """Forwards everything it does not override to the wrapped executor."""

    def __init__(self, inner: DurableExecutor) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __aenter__(self) -> Any:
        await self.inner.__aenter__()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)  # type: ignore[attr-defined]

    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> WorkflowHandle:
        return await self.inner.execute(fn, options)

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        await self.inner.signal(workflow_id, signal)

    async def query(self, workflow_id: str, query_type: str) -> Any:
        return await self.inner.query(workflow_id, query_type)

    async def cancel(self, workflow_id: str) -> None:
        await self.inner.cancel(workflow_id)

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        return await self.inner.update(workflow_id, name, arg, update_id)


class _HookedHandle:
    def __init__(self, inner: WorkflowHandle, hooks: Hooks) -> None:
        self._inner = inner
        self._hooks = hooks
        self._reported = False

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def run_id(self) -> str:
        return self._inner.run_id

    async def status(self) -> WorkflowStatus:
        return await self._inner.status()

    async def result(self, timeout: Duration | None = None) -> Any:
        try:
            value = await self._inner.result(timeout)
        except (WorkflowFailedError, WorkflowCanceledError) as err:
            if not self._reported:
                self._reported = True
                await call_hook(self._hooks.on_workflow_fail, self.id, err)
            raise
        if not self._reported:
            self._reported = True
            await call_hook(self._hooks.on_workflow_complete, self.id, value)
        return value


class _HookedExecutor(_Wrapper):
    def __init__(self, inner: DurableExecutor, hooks: Hooks) -> None:
        super().__init__(inner)
        self._hooks = hooks

    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> WorkflowHandle:
        await call_hook(self._hooks.on_workflow_start, options.id, options.input)
        return _HookedHandle(await self.inner.execute(fn, options), self._hooks)

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        await call_hook(self._hooks.on_signal, workflow_id, signal)
        await self.inner.signal(workflow_id, signal)


def with_hooks(hooks: Hooks) -> Middleware:
    """Fire ``hooks`` from outside the executor.

    Start fires on ``execute``, signal on ``signal``; complete or fail fire
    once, when a handle's ``result()`` resolves.
    """

    def middleware(inner: DurableExecutor) -> DurableExecutor:
        return _HookedExecutor(inner, hooks)

    return middleware


class _TracedExecutor(_Wrapper):
    def __init__(self, inner: DurableExecutor, tracer: trace.Tracer) -> None:
        super().__init__(inner)
        self._tracer = tracer

    def _span(self, op: str, workflow_id: str, **attrs: str) -> Any:
        attributes = {"workflow.id": workflow_id, "workflow.operation": op}
        attributes.update({f"workflow.{k}": v for k, v in attrs.items()})
        return self._tracer.start_as_current_span(f"workflow.{op}", attributes=attributes)

    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> WorkflowHandle:
        with self._span("execute", options.id):
            return await self.inner.execute(fn, options)

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        with self._span("signal", workflow_id, signal_name=signal.name):
            await self.inner.signal(workflow_id, signal)

    async def query(self, workflow_id: str, query_type: str) -> Any:
        with self._span("query", workflow_id, query_type=query_type):
            return await self.inner.query(workflow_id, query_type)

    async def cancel(self, workflow_id: str) -> None:
        with self._span("cancel", workflow_id):
            await self.inner.cancel(workflow_id)

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        with self._span("update", workflow_id, update_name=str(name)):
            return await self.inner.update(workflow_id, name, arg, update_id)


def with_tracing(tracer_provider: trace.TracerProvider | None = None) -> Middleware:
    """OpenTelemetry spans ``workflow.<op>`` with attribute ``workflow.id``; errors recorded."""

    def middleware(inner: DurableExecutor) -> DurableExecutor:
        tracer = trace.get_tracer("app.workflow", tracer_provider=tracer_provider)
        return _TracedExecutor(inner, tracer)

    return middleware
