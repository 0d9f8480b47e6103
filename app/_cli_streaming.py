"""The broker-facing commands: ``worker``, ``topics``, ``start``, ``signal``, ``query``,
``update``, ``cancel``.

``list`` and ``show`` read a broker instead of SQLite when ``--broker`` (or
``$KAFKA_BOOTSTRAP_SERVERS``) is given. Every setting not given as a flag
comes from its environment variable (``python -m app settings`` lists them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app._render import render_history, render_state, render_waiting
from app.workflow import (
    CodecChain,
    CompressionCodec,
    Signal,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
    load_codec,
)
from app.workflow._payloads import Payloads

ENV_PREFIX = "STREAMFLOW_"

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_broker_options(parser: argparse.ArgumentParser, *, topology: bool = True) -> None:
    parser.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    if topology:
        parser.add_argument("--app-id", metavar="ID", help="topic prefix (default: streamflow)")
        parser.add_argument("--partitions", type=int, metavar="N", help="partitions per topic")
    _add_security_options(parser)


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    """A flag per TLS/SASL setting, from its declaration (passwords: env only)."""
    try:
        from app.streaming._security import SECRETS, KafkaSecurity
    except ImportError:  # no kafka extra: the broker commands cannot run anyway
        return
    group = parser.add_argument_group("TLS and SASL (docs/security.md)")
    for name, info in KafkaSecurity.model_fields.items():
        if name not in SECRETS:
            group.add_argument(
                "--" + name.replace("_", "-"),
                metavar=name.rpartition("_")[2].upper(),
                help=f"{info.description} (default: ${ENV_PREFIX}{name.upper()})",
            )


def _security_args(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from app.streaming._security import SECRETS, KafkaSecurity
    except ImportError:
        return {}
    return {
        name: getattr(args, name, None)
        for name in KafkaSecurity.model_fields
        if name not in SECRETS
    }


def add_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        help="key file to decrypt payloads with (default: $STREAMFLOW_CODEC_KEY_FILE); "
        "without it, encrypted payloads are shown as such",
    )


def payload_reader(args: argparse.Namespace) -> Payloads:
    """Decodes what it can for display; what it cannot stays marked as encrypted."""
    key_file = getattr(args, "key_file", None) or os.environ.get("STREAMFLOW_CODEC_KEY_FILE")
    chain = load_codec(key_file) if key_file else CodecChain([CompressionCodec(None)])
    return Payloads(chain, lenient=True)


def note_undecoded(args: argparse.Namespace, payloads: Payloads) -> None:
    if payloads.undecoded:
        print(
            f"{args.prog}: note: {payloads.undecoded} payloads are encrypted with a key not "
            "given: pass --key-file (or set STREAMFLOW_CODEC_KEY_FILE) to show them",
            file=sys.stderr,
        )


def broker_given(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "broker", None) or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def settings_from(args: argparse.Namespace, **extra: Any) -> Any:
    from app.streaming.settings import StreamingSettings

    return StreamingSettings.from_env(
        bootstrap_servers=getattr(args, "broker", None),
        app_id=getattr(args, "app_id", None),
        partitions=getattr(args, "partitions", None),
        generation=getattr(args, "generation", None),
        **_security_args(args),
        **extra,
    )


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def attribute_arg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``: a JSON number or boolean stays typed, anything else is text."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)  # 42, 1.5, true: typed; anything else is text
    except ValueError:
        value = raw
    if not isinstance(value, str | int | float | bool):
        value = raw
    return name, value


# -- settings -------------------------------------------------------------------
def add_settings(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "settings",
        help="list the streaming settings, their env vars and defaults",
        description="List every streaming setting: env var, type, default, meaning.",
    )
    parser.set_defaults(handler=_settings)


async def _settings(args: argparse.Namespace) -> int:
    from app.streaming.settings import StreamingSettings

    rows = StreamingSettings.describe()
    width = max(len(env) for env, *_ in rows)
    for env, kind, default, doc in rows:
        print(f"{env:<{width}} {kind:<6} {default:<18} {doc}")
    return 0


# -- topics ---------------------------------------------------------------------
def add_topics(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "topics",
        help="create or check the deployment's topics",
        description="Create the topics of the topology (idempotent) or check them.",
    )
    parser.add_argument("action", choices=["create", "check", "list", "grow"])
    add_broker_options(parser)
    parser.add_argument("--replication", type=int, metavar="R", help="replication factor")
    parser.add_argument("--generation", type=int, metavar="G", help="topic generation (default: 1)")
    parser.add_argument("--to", type=int, metavar="N", help="grow: the new partition count")
    parser.set_defaults(handler=_topics)


async def _topics(args: argparse.Namespace) -> int:
    from app.streaming.admin import check_topics, ensure_topics

    settings = settings_from(args, replication=args.replication)
    if args.action == "grow":
        from app.streaming.admin import grow, read_generation

        announced = await read_generation(settings)
        if announced is not None and announced[0] > settings.generation:
            settings = settings.model_copy(
                update={"generation": announced[0], "partitions": announced[1]}
            )
        if args.to is None:
            print(
                f"{args.prog}: topics grow needs --to N (the new partition count)", file=sys.stderr
            )
            return 2
        new = await grow(settings, args.to)
        print(
            f"generation {new.generation} ({args.to} partitions) created; generation "
            f"{settings.generation} is handing its running workflows over. Start workers "
            f"with STREAMFLOW_GENERATION={new.generation} STREAMFLOW_PARTITIONS={args.to}."
        )
        return 0
    specs = settings.topology.specs()
    if args.action == "list":
        for spec in specs:
            configs = ",".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
            print(f"{spec.name}\t{spec.partitions}\t{configs}\t{spec.doc}")
        return 0
    if args.action == "create":
        created = await ensure_topics(settings, specs)
        print(f"created {len(created)} of {len(specs)} topics on {settings.bootstrap_servers}")
        for name in created:
            print(f"  {name}")
    problems = await check_topics(settings, specs)
    for problem in problems:
        print(f"{args.prog}: {problem}", file=sys.stderr)
    if args.action == "check" and not problems:
        print(f"all {len(specs)} topics present on {settings.bootstrap_servers}")
    return 1 if problems else 0


# -- worker ---------------------------------------------------------------------
def add_worker(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a streaming worker (executor partitions and/or activities)",
        description="Run a worker: consume the commands topic as executor partitions "
        "and/or run activity tasks. MODULE names an importable module whose "
        "`workflows` and `activities` lists say what this worker runs.",
    )
    add_broker_options(parser)
    parser.add_argument("--app", required=True, metavar="MODULE", help="module with the lists")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--activities-only", action="store_true", help="only run activities")
    mode.add_argument("--no-activities", action="store_true", help="only executor partitions")
    parser.add_argument("--task-queue", metavar="Q", help="activity task queue to serve")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="port of /metrics, /healthz and /readyz (default: $STREAMFLOW_METRICS_PORT "
        "or 9464; 0: none); each worker on a host needs its own",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="stable id of this worker (static group membership): restarted with the same "
        "id, it gets its partitions back without a rebalance",
    )
    parser.set_defaults(handler=_worker)


def load_app_module(name: str) -> tuple[list[Any], list[Any]]:
    """The ``workflows`` and ``activities`` lists of module ``name``."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(f"cannot import worker module {name!r}: {exc}") from None
    workflows = getattr(module, "workflows", None)
    activities = getattr(module, "activities", None)
    if workflows is None and activities is None:
        raise SystemExit(
            f"module {name!r} has neither a `workflows` nor an `activities` list: "
            "define them to say what this worker runs"
        )
    return list(workflows or ()), list(activities or ())


async def _worker(args: argparse.Namespace) -> int:
    from app.streaming import StreamingWorker
    from app.streaming._health import HealthServer, PortInUseError
    from app.streaming.admin import ensure_topics

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("app").setLevel(os.environ.get("STREAMFLOW_LOG_LEVEL", "INFO").upper())
    log = logging.getLogger("app.streaming.worker")
    settings = settings_from(
        args,
        task_queue=args.task_queue,
        metrics_port=args.metrics_port,
        instance_id=args.instance_id,
    )
    workflows, activities = load_app_module(args.app)
    worker = StreamingWorker(
        settings,
        workflows,
        activities,
        run_executor=not args.activities_only,
        run_activities=not args.no_activities,
    )

    def readiness() -> tuple[bool, list[str]]:
        return worker.ready, worker.status()

    http = None
    if settings.metrics_port:
        http = HealthServer(worker.metrics.registry, settings.metrics_port, readiness)
        try:
            http.start()  # first: a taken port fails at once, before anything else starts
        except PortInUseError as exc:
            print(f"{args.prog}: {exc.strerror}", file=sys.stderr)
            return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1 logs what every task and thread is waiting on (a stuck worker's stacks)
    loop.add_signal_handler(signal.SIGUSR1, _dump_stacks)
    try:
        starting = asyncio.ensure_future(_start_worker(worker, settings, ensure_topics))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
        else:
            starting.result()
            log.info(
                "worker started: app id %s, broker %s, metrics port %s",
                settings.topology.namespace,
                settings.bootstrap_servers,
                settings.metrics_port,
            )
            await stopped
        stopped.cancel()
        log.info("stopping")
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if type(exc).__name__ not in reason:
            reason = f"{type(exc).__name__}: {reason}"
        print(
            f"{args.prog}: the worker could not start (Kafka at {settings.bootstrap_servers}): "
            f"{reason}",
            file=sys.stderr,
        )
        return 1
    finally:
        await worker.stop()
        if http is not None:
            http.stop()
    return 0


async def _start_worker(worker: Any, settings: Any, ensure_topics: Any) -> None:
    try:
        await asyncio.wait_for(ensure_topics(settings), settings.request_timeout)
    except TimeoutError:
        raise TimeoutError(
            f"no answer from Kafka at {settings.bootstrap_servers} within "
            f"{settings.request_timeout:g}s"
        ) from None
    await worker.start()


def _dump_stacks() -> None:
    import faulthandler
    import io

    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- task {task.get_name()}\n")
        # follow the chain of awaits down to where the task is suspended
        awaitable: Any = task.get_coro()
        depth = 0
        while awaitable is not None and depth < 40:
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
            if frame is not None:
                out.write(
                    f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n"
                )
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
            depth += 1
    logging.getLogger("app.streaming.worker").warning("task stacks:\n%s", out.getvalue())
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    logging.getLogger("app.streaming.worker").warning("end of stacks")


# -- client commands ------------------------------------------------------------
def add_start(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "start", help="start a workflow on the workers", description="Start a workflow run."
    )
    parser.add_argument("workflow_type", metavar="WORKFLOW_TYPE")
    parser.add_argument("--id", required=True, metavar="WORKFLOW_ID")
    parser.add_argument("--input", type=_json_arg, metavar="JSON", help="input as JSON")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="workflow timeout")
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    parser.add_argument(
        "--attr",
        action="append",
        type=attribute_arg,
        default=[],
        metavar="NAME=VALUE",
        help="a search attribute (repeatable)",
    )
    parser.add_argument("--memo", type=_json_arg, metavar="JSON", help="memo, a JSON object")
    add_broker_options(parser)
    parser.set_defaults(handler=_start)


def add_signal(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "signal", help="send a signal to a running workflow", description="Send a signal."
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    parser.add_argument("name", metavar="SIGNAL")
    parser.add_argument("--payload", type=_json_arg, metavar="JSON", help="payload as JSON")
    parser.add_argument("--sender", default="", metavar="ID", help="sender id")
    add_broker_options(parser)
    parser.set_defaults(handler=_signal)


def add_query(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "query", help="query a workflow", description="Run a query and print its JSON answer."
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    parser.add_argument("name", metavar="QUERY")
    add_broker_options(parser)
    parser.set_defaults(handler=_query)


def add_update(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "update",
        help="run an update of a running workflow",
        description="Run an update handler of a running workflow and print its JSON result. "
        "The same --update-id again returns the same result without running it twice.",
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    parser.add_argument("name", metavar="UPDATE")
    parser.add_argument("--payload", type=_json_arg, metavar="JSON", help="argument as JSON")
    parser.add_argument(
        "--update-id", metavar="ID", help="the update's id (default: a new one); repeat to dedupe"
    )
    add_broker_options(parser)
    parser.set_defaults(handler=_update)


def add_cancel(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "cancel", help="cancel a running workflow", description="Cancel a running workflow."
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    add_broker_options(parser)
    parser.set_defaults(handler=_cancel)


_ADMIN = {
    "terminate": (
        "end a running workflow at once, without cleanup",
        "Terminate a running workflow: none of its code runs again.",
    ),
    "pause": (
        "hold a running workflow: no new activity, timers wait, signals are kept",
        "Pause a running workflow until `resume`; queries still answer.",
    ),
    "resume": (
        "resume a paused workflow",
        "Resume a paused workflow: what it held is applied in order.",
    ),
}


def _add_admin(name: str) -> Callable[[SubParsers], None]:
    def add(subparsers: SubParsers) -> None:
        help_text, description = _ADMIN[name]
        parser = subparsers.add_parser(name, help=help_text, description=description)
        parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
        parser.add_argument("--reason", default="", help="recorded in the history")
        add_broker_options(parser)
        parser.set_defaults(handler=_admin, action=name)

    return add


def add_reset(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "reset",
        help="start a new run from a workflow's events up to an event id",
        description="Reset a workflow: a new run replays its latest run's events up to "
        "--to-event and goes on live from there (a running run is terminated first).",
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    parser.add_argument("--to-event", type=int, required=True, metavar="ID")
    parser.add_argument("--reason", default="", help="recorded in the new run's history")
    add_broker_options(parser)
    parser.set_defaults(handler=_reset)


def add_schedule(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="create, list, describe, pause, resume, trigger or delete schedules",
        description="Manage schedules: a workflow started on a cron expression (UTC) or "
        "every N seconds, by the workers.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a schedule")
    create.add_argument("schedule_id", metavar="SCHEDULE_ID")
    create.add_argument("workflow_type", metavar="WORKFLOW_TYPE")
    create.add_argument("--input", type=_json_arg, metavar="JSON", help="each run's input")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="a cron expression, e.g. '*/5 * * * *'")
    when.add_argument("--every", type=float, metavar="SECONDS", help="an interval")
    create.add_argument("--overlap", default="skip", choices=["skip", "buffer_one", "allow_all"])
    create.add_argument("--jitter", type=float, default=0.0, metavar="SECONDS")
    create.add_argument("--catchup-window", type=float, default=60.0, metavar="SECONDS")
    create.add_argument("--paused", action="store_true", help="create it paused")
    add_broker_options(create)
    actions.add_parser("list", help="list the schedules").set_defaults()
    add_broker_options(actions.choices["list"])
    for name, text in (
        ("describe", "a schedule's state"),
        ("pause", "stop acting on ticks"),
        ("resume", "act on ticks again"),
        ("trigger", "act now"),
        ("delete", "end the schedule (its runs go on)"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("schedule_id", metavar="SCHEDULE_ID")
        add_broker_options(sub)
    parser.set_defaults(handler=_schedule)


async def _schedule(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        if args.action == "create":
            made = await ex.create_schedule(
                args.schedule_id,
                args.workflow_type,
                args.input,
                cron=args.cron,
                every=args.every,
                overlap=args.overlap,
                jitter=args.jitter,
                catchup_window=args.catchup_window,
                paused=args.paused,
            )
            print(json.dumps(made))
        elif args.action == "list":
            for state in await ex.list_schedules():
                print(json.dumps(state, default=str))
        elif args.action == "describe":
            print(json.dumps(await ex.describe_schedule(args.schedule_id), indent=2, default=str))
        else:
            await getattr(ex, f"{args.action}_schedule")(args.schedule_id)
            print(f"{args.action} recorded for schedule {args.schedule_id!r}")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from app.streaming import KafkaExecutor

    return KafkaExecutor(settings=settings_from(args))


async def _start(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        handle = await ex.execute(
            args.workflow_type,
            WorkflowOptions(
                id=args.id,
                input=args.input,
                timeout=args.timeout,
                search_attributes=dict(args.attr),
                memo=args.memo,
            ),
        )
        print(json.dumps({"workflow_id": handle.id, "run_id": handle.run_id}))
        if args.wait:
            print(json.dumps(await handle.result(), default=str))
    return 0


async def _signal(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        await ex.signal(
            args.workflow_id, Signal(name=args.name, payload=args.payload, sender_id=args.sender)
        )
    print(f"signal {args.name!r} recorded for {args.workflow_id!r}")
    return 0


async def _query(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        answer = await ex.query(args.workflow_id, args.name)
    if isinstance(answer, WorkflowStatus):
        answer = answer.value
    print(json.dumps(answer, default=str))
    return 0


async def _update(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        answer = await ex.update(args.workflow_id, args.name, args.payload, args.update_id)
    print(json.dumps(answer, default=str))
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        await ex.cancel(args.workflow_id)
    print(f"cancel recorded for {args.workflow_id!r}")
    return 0


async def _reset(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        handle = await ex.reset(args.workflow_id, args.to_event, args.reason)
    print(json.dumps({"workflow_id": handle.id, "run_id": handle.run_id}))
    return 0


async def _admin(args: argparse.Namespace) -> int:
    async with _client(args) as ex:
        await getattr(ex, args.action)(args.workflow_id, args.reason)
    print(f"{args.action} recorded for {args.workflow_id!r}")
    return 0


async def show_from_broker(args: argparse.Namespace) -> int:
    from app.streaming._codec import WireCodec

    reader = payload_reader(args)
    async with _client(args) as ex:
        ex.wire = WireCodec(reader.chain, lenient=True)  # show what it can, mark the rest
        state, waiting = await ex.describe_waiting(args.workflow_id)
        reader = ex.wire.payloads
    print(render_state(state))
    if waiting is not None and state.status is WorkflowStatus.RUNNING:
        print()
        print(render_waiting(waiting, time.time()))
    print(f"\nHistory ({len(state.history)} events)")
    print(render_history(state.history))
    note_undecoded(args, reader)
    return 0


async def read_headers(settings: Any) -> list[WorkflowState]:
    """The latest header of every workflow in the state changelog (history left out)."""
    from app.streaming._tables import ChangelogTable, partitions_of, recover

    table = ChangelogTable(settings.topology.changelog("workflows"))
    partitions = await partitions_of(settings, table.topic, settings.request_timeout)
    await recover(
        settings,
        [table],
        partitions,
        fetch_wait_ms=settings.fetch_wait_ms,
        timeout=settings.request_timeout,
    )
    states = []
    for key, value in table.items():
        if key.startswith(b"\x00"):
            continue  # a partition's own record, not a workflow
        header = json.loads(value)
        states.append(WorkflowState.model_validate({**header["state"], "history": []}))
    return states


COMMANDS = (
    add_worker,
    add_topics,
    add_start,
    add_signal,
    add_query,
    add_update,
    add_cancel,
    _add_admin("terminate"),
    _add_admin("pause"),
    _add_admin("resume"),
    add_reset,
    add_schedule,
    add_settings,
)
