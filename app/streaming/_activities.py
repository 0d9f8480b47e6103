"""The activity side of a worker: runs the activity tasks of one task queue.

Its own consumer group, so that activity-only workers never own executor
partitions and executor-only workers never run activities. Each outcome is
recorded in the ``done-tasks`` table before it is published as an
``activity_result`` command: a task redelivered after a crash, or dispatched
again by a new executor owner, publishes the recorded outcome instead of
running a second time.

Heartbeats (``activity.heartbeat(details)``) go to the executor partition of
the workflow as ``heartbeat`` commands, at most one per third of the
attempt's heartbeat timeout (the latest details win). The executor answers a
heartbeat of an attempt it no longer waits for (the workflow was canceled or
ended, or the attempt timed out) on the replies topic, under this worker's
client id (tailed from this worker's first heartbeat on); the attempt's
next ``heartbeat()`` then raises ``ActivityCancelledError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.workflow import activity as _activity
from app.workflow._activity_runner import run_attempt
from app.workflow._codec import PayloadCodecError
from app.workflow._names import FunctionTable
from app.workflow._types import FailureInfo

from ._codec import WireCodec
from ._consumer import DeliveryError, GroupConsumer, Producer, Record
from ._machine import Command, CommandKind, Task
from ._messages import InvalidCommandError, decode_reply, partition_for
from ._metrics import WorkerMetrics
from ._outputs import Outbox, changelog_table, recover_tables, to_dead_letter
from ._security import start_client
from ._wire import WireError
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.activities")

HEARTBEAT_EVERY = 5.0
"""Seconds between heartbeats of an attempt without a heartbeat timeout (its details
still reach a retry, and a cancel still reaches it)."""


class _Heartbeats:
    """Sends one attempt's heartbeats: the first at once (as it starts), then at most one
    per interval.

    ``beat`` may be called from any thread; the latest details are sent at
    the end of each interval, so the last heartbeat before a stall arrives.
    """

    def __init__(self, worker: ActivityWorker, task: Task) -> None:
        self.worker = worker
        self.task = task
        self.loop = asyncio.get_running_loop()
        limit = task.heartbeat_timeout
        self.interval = limit / 3 if limit is not None else HEARTBEAT_EVERY
        self.attempt = _activity._Attempt(self.info(), self.beat)
        self._latest: Any = None
        self._dirty = False
        self._last_sent = float("-inf")
        self._handle: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._closed = False

    def info(self) -> _activity.ActivityInfo:
        task = self.task
        return _activity.ActivityInfo(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            activity_id=f"{task.workflow_id}/{task.step}",
            activity_name=task.activity_name,
            attempt=task.attempt,
            step=task.step,
            heartbeat_timeout=task.heartbeat_timeout,
            heartbeat_details=task.heartbeat_details,
        )

    def beat(self, details: Any) -> None:
        self.loop.call_soon_threadsafe(self._on_beat, details)

    def _on_beat(self, details: Any) -> None:
        if self._closed:
            return
        self._latest, self._dirty = details, True
        if self._handle is not None:
            return  # a send is due; it takes the latest details
        wait = self._last_sent + self.interval - time.monotonic()
        if wait <= 0:
            self._send()
        else:
            self._handle = self.loop.call_later(wait, self._send)

    def _send(self) -> None:
        self._handle = None
        if self._closed or not self._dirty:
            return
        self._dirty = False
        self._last_sent = time.monotonic()
        self._seq += 1
        send = self.loop.create_task(self.worker.send_heartbeat(self.task, self._latest, self._seq))
        self._sends.add(send)
        send.add_done_callback(self._sends.discard)

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()

    @property
    def latest(self) -> Any:
        """The details of the attempt's last heartbeat (sent or not), or None."""
        return self._latest


class ActivityWorker:
    """Consumes ``settings.task_queue``'s activity tasks and runs them in a thread pool."""

    def __init__(
        self,
        settings: StreamingSettings,
        activities: FunctionTable,
        metrics: WorkerMetrics,
        wire: WireCodec | None = None,
    ) -> None:
        self.settings = settings
        self.activities = activities
        self.metrics = metrics
        self.wire = wire or WireCodec(None)
        topo = settings.topology
        group = topo.activity_group(settings.task_queue)
        self.queue = topo.activity_tasks(settings.task_queue)
        self.producer = Producer(settings, f"{group}.runner")
        self.results = Outbox(self.producer, topo.commands)
        self.dead_letter = Outbox(self.producer, topo.dead_letter)
        self.done_table = changelog_table(self.producer, topo.changelog("done-tasks", group))
        self.consumer = GroupConsumer(
            settings,
            group,
            self.queue,
            self,
            self.producer,
            concurrency=settings.activity_concurrency,
        )
        self._pool = ThreadPoolExecutor(settings.activity_threads, "activity")
        self._running: dict[str, asyncio.Future[None]] = {}
        self.client_id = f"activities-{uuid.uuid4().hex[:12]}"
        """Where the executors answer heartbeats of attempts they no longer wait for."""
        self._beating: dict[str, _Heartbeats] = {}
        self._replies: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        # the replies are only read once an attempt heartbeats: a worker whose
        # activities never do polls no extra topic
        self._tailing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()

    async def _ensure_replies(self) -> None:
        """Tail this worker's replies (once), before its first heartbeat asks for one."""
        if self._tailing is None:
            self._tailing = asyncio.create_task(self._tail_replies(), name="activity-replies-start")
        try:
            await asyncio.shield(self._tailing)
        except Exception:
            self._tailing = None  # the next heartbeat tries again
            raise

    async def _tail_replies(self) -> None:
        s = self.settings
        replies = AIOKafkaConsumer(
            **s.kafka_options(),
            enable_auto_commit=False,
            fetch_max_wait_ms=s.fetch_wait_ms,
            client_id=self.client_id,
        )
        await start_client(replies.start, s, s.bootstrap_servers, s.request_timeout)
        try:
            topic = s.topology.replies
            delay = 0.05
            deadline = time.monotonic() + s.request_timeout
            while not replies.partitions_for_topic(topic):
                if time.monotonic() > deadline:
                    raise KafkaError(f"topic {topic!r} has no partitions: create the topics first")
                await replies._client.force_metadata_update()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            count = len(replies.partitions_for_topic(topic) or ())
            tp = TopicPartition(topic, partition_for(self.client_id, count))
            replies.assign([tp])
            await replies.seek_to_end(tp)
            await replies.position(tp)
        except BaseException:
            with contextlib.suppress(Exception):
                await replies.stop()
            raise
        self._replies = replies
        self._reader = asyncio.create_task(self._read_replies(), name="activity-replies")

    async def _read_replies(self) -> None:
        assert self._replies is not None
        key = self.client_id.encode()
        async for message in self._replies:
            if message.key != key or message.value is None:
                continue
            try:
                command_id, _, reply = decode_reply(message.value)
            except Exception:
                log.warning("undecodable reply at offset %s", message.offset, exc_info=True)
                continue
            if reply.ok or reply.error_type != "cancelled":
                continue
            # heartbeat/<task id>/<n>
            task_id = command_id.partition("/")[2].rpartition("/")[0]
            beating = self._beating.get(task_id)
            if beating is not None:
                log.info("attempt %s is no longer wanted: %s", task_id, reply.error)
                beating.attempt.cancel(reply.error or "the workflow no longer waits for it")

    async def send_heartbeat(self, task: Task, details: Any, seq: int) -> None:
        cmd = Command(
            command_id=f"heartbeat/{task.task_id}/{seq}",
            kind=CommandKind.HEARTBEAT,
            workflow_id=task.workflow_id,
            issued_at=datetime.now(UTC),
            payload=details,
            reply_to=self.client_id,
            run_id=task.run_id,
            step=task.step,
            attempt=task.attempt,
        )
        try:
            await self._ensure_replies()
            value = await self.wire.command_out(cmd)
            await self.results.send(key=task.workflow_id.encode(), value=value)
        except Exception:  # a lost heartbeat is made up by the next one
            log.warning("heartbeat of %s not sent", task.task_id, exc_info=True)

    async def stop(self) -> None:
        """Take no more tasks; let running ones finish and report for ``drain_timeout``.

        A thread cannot be called back, so an attempt cut short here would
        still have run once; those still running at the bound are cancelled and
        run again on the next owner.
        """
        await self.consumer.stop(self.settings.drain_timeout)
        if self._tailing is not None and not self._tailing.done():
            self._tailing.cancel()
            with contextlib.suppress(BaseException):
                await self._tailing
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._replies is not None:
            with contextlib.suppress(Exception):
                await self._replies.stop()
        await self.producer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- partitions (called by the consumer) ------------------------------------------
    async def gain(self, partitions: set[int]) -> None:
        await recover_tables(self.settings, [self.done_table], partitions)

    def lose(self, partitions: set[int]) -> None:
        self.done_table.drop(partitions)

    async def handle(self, record: Record) -> None:
        try:
            task = await self.wire.task_in(record.value)
        except PayloadCodecError as exc:
            # This worker lacks the key: not the task's fault, so no dead letter (and no
            # failed attempt). Left uncommitted, it is read again after a rewind.
            log.error(
                "activity task at %s@%s cannot be decoded: %s", record.partition, record.offset, exc
            )
            raise
        except (WireError, InvalidCommandError) as exc:
            await to_dead_letter(
                self.dead_letter, self.metrics, record, f"bad activity task: {exc}"
            )
            return
        try:
            await self._handle(task, record.partition)
        except (KafkaError, DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: keep the task with the reason, go on
            log.exception("activity task %s failed", task.task_id)
            await to_dead_letter(
                self.dead_letter,
                self.metrics,
                record,
                f"internal error while running the task: {exc!r}"[:500],
                task.workflow_id,
            )

    async def _handle(self, task: Task, partition: int) -> None:
        key = task.task_id.encode()
        done = self.done_table.get(key)
        if done is None:
            running = self._running.get(task.task_id)
            if running is not None:
                # A copy (re-driven, or redelivered) of an attempt running here: the
                # attempt reports when it finishes.
                await asyncio.shield(running)
                return
            done = await self.wire.command_out(await self.run(task))
            # durable before it is published (see the module docstring)
            await (await self.done_table.set(key, done, partition))
        await self.results.send(key=task.workflow_id.encode(), value=done)

    async def run(self, task: Task) -> Command:
        """Run one attempt here; returns its ``activity_result`` command.

        While it runs, a copy of its task taken from the topic waits for it
        instead of running it a second time. Called for each task taken, and
        by the executor of this process for the attempts it runs itself
        (eager dispatch: no task hop).
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[task.task_id] = fut
        try:
            cmd = await self._attempt(task)
            fut.set_result(None)
            return cmd
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a copy waiting on it re-raises it
            raise
        finally:
            self._running.pop(task.task_id, None)

    async def _attempt(self, task: Task) -> Command:
        fn = self.activities.get(task.activity_name)
        failure: FailureInfo | None
        if fn is None:
            known = ", ".join(self.activities.names()) or "none"
            failure = FailureInfo(
                type="app.workflow.ActivityNotRegisteredError",
                message=f"activity {task.activity_name!r} is not registered on the workers of "
                f"task queue {self.settings.task_queue!r} (registered: {known})",
            )
            result, duration = None, 0.0
        else:
            beating = self._beating[task.task_id] = _Heartbeats(self, task)
            if task.heartbeat_timeout is not None:
                # started: arms the executor's deadline (an attempt without a heartbeat
                # timeout sends nothing until it heartbeats: no extra command per attempt)
                beating.beat(task.heartbeat_details)
            try:
                done = await run_attempt(fn, task.input, beating.attempt, self._pool)
            except asyncio.CancelledError:
                beating.attempt.cancel("the worker stopped")
                raise
            finally:
                beating.close()
                self._beating.pop(task.task_id, None)
            result, failure, duration = done.result, done.failure, done.duration
            if failure is not None:
                result = beating.latest  # a failed attempt's last details, kept by its event
        self.metrics.activity_seconds.labels(
            task.activity_name, "ok" if failure is None else "failed"
        ).observe(duration)
        return Command(
            command_id=f"result/{task.task_id}",
            kind=CommandKind.ACTIVITY_RESULT,
            workflow_id=task.workflow_id,
            issued_at=datetime.now(UTC),
            payload=result,
            run_id=task.run_id,
            step=task.step,
            attempt=task.attempt,
            duration=duration,
            failure=failure,
        )
