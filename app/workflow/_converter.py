"""Payload conversion (value <-> JSON-compatible data) and error (de)serialization.

One converter serves every runtime: values go to canonical JSON data when
recorded, and come back typed by the annotation of the parameter or return
value that receives them. Live execution passes through the same conversion
as replay, so workflow code sees identical values either way.
"""

from __future__ import annotations

import inspect
import json
import sys
import traceback
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from ._errors import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    NonRetryableError,
    PayloadError,
)
from ._types import FailureInfo

_SCALARS = (str, int, float, bool, type(None))
_MAX_STACK = 4000


def to_payload(value: Any, what: str = "value") -> Any:
    """Convert ``value`` to canonical JSON data, or raise :class:`PayloadError`."""
    if type(value) in _SCALARS and not (isinstance(value, float) and value != value):
        return value
    try:
        raw = pydantic_core.to_json(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise PayloadError(
            f"{what} of type {type(value).__name__} is not JSON-serializable: {exc}. "
            "Use JSON types, dataclasses or pydantic models."
        ) from exc
    return json.loads(raw)


@lru_cache(maxsize=1024)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def from_payload(data: Any, hint: Any, what: str = "value") -> Any:
    """Rebuild a value of type ``hint`` from JSON data (no-op when ``hint`` is Any)."""
    if hint is None or hint is Any or hint is inspect.Parameter.empty or hint is object:
        return _copy_json(data)  # workflow code may mutate what it gets; history must not change
    try:
        adapter = _adapter(hint)
    except TypeError:  # unhashable hint: build it fresh
        adapter = TypeAdapter(hint)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise PayloadError(f"{what} does not match its annotation {hint!r}: {exc}") from exc


def _copy_json(data: Any) -> Any:
    if type(data) is dict:
        return {key: _copy_json(value) for key, value in data.items()}
    if type(data) is list:
        return [_copy_json(value) for value in data]
    return data


class Signature(typing.NamedTuple):
    """What a workflow or activity function takes and returns."""

    params: int
    required: int
    input_hint: Any
    return_hint: Any
    is_async: bool


@lru_cache(maxsize=1024)
def signature_of(fn: Callable[..., Any], skip: int = 0) -> Signature:
    """Inspect ``fn``; ``skip`` leading parameters (the workflow context) are not the input."""
    target = fn if inspect.isroutine(fn) else type(fn).__call__
    sig = inspect.signature(fn)
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: fall back to untyped
        hints = {}
    params = positional[skip:]
    required = sum(1 for p in params if p.default is p.empty) + sum(
        1 for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    )
    input_hint = hints.get(params[0].name, Any) if params else Any
    return_hint = hints.get("return", Any)
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(target)
    return Signature(len(params), required, input_hint, return_hint, is_async)


@lru_cache(maxsize=1024)
def _takes_parameters(fn: Callable[..., Any]) -> bool:
    return bool(inspect.signature(fn).parameters)


def _type_name(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def encode_failure(exc: BaseException, *, with_stack: bool = False) -> FailureInfo:
    """Serialize an exception (and, for :class:`ActivityError`, its cause)."""
    cause = exc.__cause__
    stack = ""
    if with_stack:
        stack = "".join(traceback.format_exception(exc))[-_MAX_STACK:]
    if isinstance(exc, ActivityError):
        return FailureInfo(
            type=_type_name(type(exc)),
            message=exc.message,
            activity_name=exc.activity_name,
            attempts=exc.attempts,
            cause=encode_failure(cause) if cause is not None else None,
        )
    if isinstance(exc, ChildWorkflowError):
        return FailureInfo(
            type=_type_name(type(exc)),
            message=str(exc),
            attempts=exc.attempts,
            stack=stack,
            cause=encode_failure(cause) if cause is not None else None,
        )
    if isinstance(exc, ApplicationError) and exc.type:
        return FailureInfo(
            type=exc.type, message=exc.message, non_retryable=exc.non_retryable, stack=stack
        )
    return FailureInfo(
        type=_type_name(type(exc)),
        message=str(exc),
        non_retryable=isinstance(exc, (NonRetryableError, PayloadError)),
        stack=stack,
    )


def _loaded_exception_type(name: str) -> type[BaseException] | None:
    # Only types whose module is already imported: history must never make us import code.
    module_name, _, qualname = name.rpartition(".")
    while module_name:
        module = sys.modules.get(module_name)
        if module is not None:
            obj: Any = module
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    return None
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
            return None
        # nested qualname: "pkg.mod.Outer.Inner" -> try "pkg.mod" with "Outer.Inner"
        module_name, _, head = module_name.rpartition(".")
        qualname = f"{head}.{qualname}"
    return None


def decode_failure(info: FailureInfo) -> BaseException:
    """Rebuild an exception from its serialized form, the same way in every process."""
    if info.activity_name is not None and info.type == _type_name(ActivityError):
        err = ActivityError(info.activity_name, info.attempts or 1, info.message)
        if info.cause is not None:
            err.__cause__ = decode_failure(info.cause)
        return err
    exc_type = _loaded_exception_type(info.type)
    exc: BaseException | None = None
    if exc_type is not None and issubclass(exc_type, Exception):
        try:
            exc = exc_type(info.message)
        except Exception:
            exc = None
        if exc is not None and str(exc) != info.message:
            exc = None  # a constructor that rewrites its message would not round-trip
    if exc is None:
        exc = ApplicationError(info.message, type=info.type, non_retryable=info.non_retryable)
    if info.cause is not None:
        exc.__cause__ = decode_failure(info.cause)
    return exc


def describe_failure(info: FailureInfo) -> str:
    """One line for humans: ``ValueError: boom``."""
    short = info.type.rpartition(".")[2] or info.type
    if info.activity_name is not None:
        n = info.attempts or 1
        return (
            f"{short}: activity {info.activity_name!r} failed after {n} "
            f"{'attempt' if n == 1 else 'attempts'}: {info.message}"
        )
    return f"{short}: {info.message}" if info.message else short


def check_workflow_call(fn: Callable[..., Any], options: Any) -> None:
    """Fail at the call when ``fn`` cannot be a workflow or ``options`` are not options.

    Shared by every executor's ``execute``.
    """
    from ._errors import InvalidArgumentError
    from ._types import WorkflowOptions

    if not isinstance(options, WorkflowOptions):
        raise InvalidArgumentError(f"options must be WorkflowOptions, got {type(options).__name__}")
    if not inspect.iscoroutinefunction(fn):
        raise InvalidArgumentError(
            f"workflow {fn!r} must be an `async def` function taking (ctx, input)"
        )
    sig = signature_of(fn, 1)
    if sig.required > 1 or not _takes_parameters(fn):
        raise InvalidArgumentError(
            f"workflow {fn!r} must take (ctx) or (ctx, input): "
            "pass several values as one dataclass, model or dict"
        )
