"""Ready-made activities: an LLM call, a tool call, a human interaction.

Each returns an ``async`` activity function that checks its input and fails
at once (no retry) with a message naming what was wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import InvalidArgumentError, NonRetryableError
from ._names import NAME_ATTR


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _named(fn: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"activity name must be a non-empty string, got {name!r}")
    setattr(fn, NAME_ATTR, name)
    return fn


def llm_activity(
    invoker: Callable[[str], Any], *, name: str = "llm_activity"
) -> Callable[[Any], Awaitable[Any]]:
    """An activity sending its input (a prompt string) to ``invoker`` and returning the reply."""
    if not callable(invoker):
        raise InvalidArgumentError("llm_activity needs a callable invoker(prompt) -> reply")

    async def run_llm(prompt: Any) -> Any:
        if not isinstance(prompt, str):
            raise NonRetryableError(
                f"{name}: expected a str prompt as input, got {type(prompt).__name__}"
            )
        return await _call(invoker, prompt)

    return _named(run_llm, name)


def tool_activity(
    executor: Callable[[str, dict[str, Any]], Any], *, name: str = "tool_activity"
) -> Callable[[Any], Awaitable[Any]]:
    """An activity running ``executor(tool_name, args)`` for input ``{"name", "args"}``."""
    if not callable(executor):
        raise InvalidArgumentError("tool_activity needs a callable executor(name, args)")

    async def run_tool(params: Any) -> Any:
        if not isinstance(params, Mapping):
            raise NonRetryableError(
                f"{name}: expected a mapping {{'name': str, 'args': dict}} as input, "
                f"got {type(params).__name__}"
            )
        tool = params.get("name")
        if not isinstance(tool, str) or not tool:
            raise NonRetryableError(f"{name}: missing 'name' (a non-empty str) in input")
        args = params.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise NonRetryableError(f"{name}: 'args' must be a mapping, got {type(args).__name__}")
        return await _call(executor, tool, dict(args))

    return _named(run_tool, name)


class InteractionRequest(BaseModel):
    """What a human is asked: a prompt, optional choices, free-form metadata."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    kind: str = "approval"
    options: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class HumanManager(Protocol):
    """Delivers an :class:`InteractionRequest` to people and returns their answer."""

    def request_interaction(self, request: InteractionRequest) -> Any: ...


def human_activity(
    manager: HumanManager, *, name: str = "human_activity"
) -> Callable[[Any], Awaitable[Any]]:
    """An activity asking ``manager.request_interaction(request)`` and returning the answer.

    It blocks for as long as the manager does; for waits of hours or days,
    prefer the durable pattern: notify in an activity, then wait for a signal
    with a timeout (see the README).
    """
    if not callable(getattr(manager, "request_interaction", None)):
        raise InvalidArgumentError(
            "human_activity needs a manager with a request_interaction(request) method"
        )

    async def run_human(request: Any) -> Any:
        if isinstance(request, InteractionRequest):
            req = request
        elif isinstance(request, Mapping):
            try:
                req = InteractionRequest.model_validate(request)
            except ValidationError as exc:
                raise NonRetryableError(f"{name}: invalid interaction request: {exc}") from exc
        else:
            raise NonRetryableError(
                f"{name}: expected an InteractionRequest (or a mapping of one), "
                f"got {type(request).__name__}"
            )
        return await _call(manager.request_interaction, req)

    return _named(run_human, name)
