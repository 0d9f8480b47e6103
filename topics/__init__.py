"""The one source of topic names, partition counts, replication and cleanup policies.

The topics a partition owns (commands, activity tasks, table changelogs)
derive from the deployment's *namespace*, ``app_id`` plus the topic
generation: ``<app_id>.g<generation>.<role>``. History, replies, dead letters
and the control topic are ``<app_id>.<role>``, shared by every generation.
The partition count grows by moving to the next generation (see
``docs/architecture.md``). The changelog topics of the worker's tables are
``<consumer group>-<table>-changelog``; they are listed here too so
``check`` can verify them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_PARTITIONS",
    "DEFAULT_TASK_QUEUE",
    "DAY_MS",
    "TopicSpec",
    "Topology",
]

DEFAULT_APP_ID = "streamflow"
DEFAULT_PARTITIONS = 8
DEFAULT_TASK_QUEUE = "default"
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, size, replication and configs (cleanup policy, retention)."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)
    role: str = ""
    doc: str = ""

    @property
    def compacted(self) -> bool:
        return self.configs.get("cleanup.policy") == "compact"


@dataclass(frozen=True)
class Topology:
    """The topics of one deployment generation."""

    app_id: str = DEFAULT_APP_ID
    generation: int = 1
    partitions: int = DEFAULT_PARTITIONS
    replication: int = 1
    task_queues: Sequence[str] = (DEFAULT_TASK_QUEUE,)
    history_retention_ms: int = 30 * DAY_MS

    def __post_init__(self) -> None:
        if not self.app_id or any(c not in _NAME_CHARS for c in self.app_id):
            raise ValueError(
                f"app_id {self.app_id!r} must be non-empty and use only letters, digits, '.', "
                "'_' and '-' (it prefixes every topic name)"
            )
        if self.generation < 1:
            raise ValueError(f"generation must be >= 1, got {self.generation}")
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        if self.replication < 1:
            raise ValueError(f"replication must be >= 1, got {self.replication}")
        for queue in self.task_queues:
            if not queue or any(c not in _NAME_CHARS for c in queue):
                raise ValueError(f"task queue name {queue!r} is not a valid topic suffix")

    @property
    def namespace(self) -> str:
        return f"{self.app_id}.g{self.generation}"

    @property
    def executor_group(self) -> str:
        """The executors' consumer group (and changelog prefix) of this generation."""
        return self.namespace

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    # shared by every generation: downstream consumers and clients keep reading one
    # topic when the partition count grows
    @property
    def history(self) -> str:
        return f"{self.app_id}.history"

    @property
    def replies(self) -> str:
        return f"{self.app_id}.replies"

    @property
    def dead_letter(self) -> str:
        return f"{self.app_id}.dead-letter"

    @property
    def control(self) -> str:
        """Where the live generation is announced (compacted, one partition)."""
        return f"{self.app_id}.control"

    def activity_tasks(self, queue: str = DEFAULT_TASK_QUEUE) -> str:
        return f"{self.namespace}.activity-tasks.{queue}"

    def activity_group(self, queue: str = DEFAULT_TASK_QUEUE) -> str:
        """The consumer group (and changelog prefix) of the activity workers of ``queue``."""
        return f"{self.namespace}.activities.{queue}"

    def changelog(self, table: str, app_id: str | None = None) -> str:
        return f"{app_id or self.executor_group}-{table}-changelog"

    def next_generation(self, partitions: int) -> Topology:
        """The topology to grow into: same app, next generation, ``partitions`` partitions."""
        if partitions < self.partitions:
            raise ValueError(
                f"a new generation cannot shrink: {partitions} < {self.partitions} partitions"
            )
        return Topology(
            self.app_id,
            self.generation + 1,
            partitions,
            self.replication,
            tuple(self.task_queues),
            self.history_retention_ms,
        )

    def specs(self) -> list[TopicSpec]:
        """Every topic of this generation, with its configuration."""
        n, r = self.partitions, self.replication
        delete = {"cleanup.policy": "delete"}
        specs = [
            TopicSpec(
                self.commands,
                n,
                r,
                {**delete, "retention.ms": str(7 * DAY_MS)},
                "commands",
                "start, signal, cancel, query, activity result, timer fired; key = workflow id",
            ),
            TopicSpec(
                self.history,
                n,
                r,
                {**delete, "retention.ms": str(self.history_retention_ms)},
                "history",
                "every HistoryEvent, for downstream consumers; key = workflow id",
            ),
            TopicSpec(
                self.replies,
                n,
                r,
                {**delete, "retention.ms": str(3600 * 1000)},
                "replies",
                "answers to client commands (start, signal, query); key = client id",
            ),
            TopicSpec(
                self.dead_letter,
                n,
                r,
                {**delete, "retention.ms": str(30 * DAY_MS), "max.message.bytes": str(16 << 20)},
                "dead-letter",
                "commands that could not be decoded or applied, with the reason",
            ),
            TopicSpec(
                self.changelog("workflows"),
                n,
                r,
                {"cleanup.policy": "compact"},
                "state",
                "workflow state snapshots (table changelog); key = workflow id",
            ),
            TopicSpec(
                self.changelog("history"),
                n,
                r,
                {"cleanup.policy": "compact"},
                "history-table",
                "each run's events (table changelog); key = workflow id # event id",
            ),
            TopicSpec(
                self.changelog("timers"),
                n,
                r,
                {"cleanup.policy": "compact"},
                "timers",
                "due times of pending timers (table changelog); key = workflow id",
            ),
        ]
        specs += [
            TopicSpec(
                self.changelog("done-tasks", self.activity_group(q)),
                n,
                r,
                {"cleanup.policy": "compact"},
                "done-tasks",
                f"activity tasks of queue {q!r} already finished, so a redelivered task does "
                "not run again",
            )
            for q in self.task_queues
        ]
        specs += [
            TopicSpec(
                self.activity_tasks(q),
                n,
                r,
                {**delete, "retention.ms": str(7 * DAY_MS)},
                "activity-tasks",
                f"work for activity workers of task queue {q!r}",
            )
            for q in self.task_queues
        ]
        specs.append(
            TopicSpec(
                self.control,
                1,
                r,
                {"cleanup.policy": "compact"},
                "control",
                "the current generation (key 'generation'), read by clients at start",
            )
        )
        return specs

    def spec(self, role: str) -> TopicSpec:
        for spec in self.specs():
            if spec.role == role:
                return spec
        raise KeyError(role)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def names(specs: Iterable[TopicSpec]) -> list[str]:
    return [s.name for s in specs]
