"""The agent: each command on course-commands becomes at most one event on course-events.

Per command: read it, decide it against the tables (deciding/handler.py, which asks
deciding/domain.py), stage its events and table changes; the next commit sends them
(transactions.py). The table changes, the events and the command's offset are one
Kafka transaction. A command already decided (a repeated request) is acknowledged and
writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import faust
from faust.types import Message

from course_processor.deciding.commands import Unprocessable, read_command
from course_processor.deciding.handler import Decider, Plan, utc_now
from course_processor.deciding.wire import event_headers, outcome
from course_processor.faust_eos.app import Processor
from course_processor.faust_eos.continuity import Continuity
from course_processor.faust_eos.failstop import fail_stop
from course_processor.faust_eos.tables import TableView
from course_processor.faust_eos.transactions import SourcePartitionTransactionManager
from course_processor.state.local import OutRecord
from schemas.codec import encode
from schemas.messages import Command
from service_kit.deadletter import dead_letter_headers
from service_kit.records import TRACED_NAME, SourceRecord, header_pairs

log = logging.getLogger("course_processor")


def register(p: Processor) -> None:
    handler = CommandHandler(p)

    # concurrency=1: one command at a time, so a course's commands are decided in
    # partition order, which is the order the command API wrote them.
    @p.app.agent(p.commands, name="course_processor.decide", concurrency=1)
    async def decide(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                handler.handle(event.message)
            except Exception as exc:
                # Not acked, not committed: a restart decides this command again.
                fail_stop("a command could not be processed", exc)


class CommandHandler:
    def __init__(self, p: Processor) -> None:
        self.p = p
        self.metrics = p.metrics
        # The tables are co-partitioned with course-commands: the worker that owns a
        # course's partition is the only reader and writer of that course's entries.
        decided, waiting = TableView(p.decided), TableView(p.waiting)
        self.decider = Decider(TableView(p.courses), TableView(p.seats), decided,
                               p.settings.secret, oldest=decided.oldest,
                               places=TableView(p.places), waiting=waiting,
                               first=waiting.first)
        self.continuity = Continuity()
        # prometheus_client's labels() checks and locks on every call: each label set's
        # child is looked up once.
        self.counted = _children(self.metrics.commands)
        self.outcomes = _children(self.metrics.decisions)
        self.local = p.runtime.local

    def handle(self, message: Message) -> None:
        started = perf_counter()
        generation = self.p.app.consumer_generation_id
        if self.continuity.skipped(generation, message.partition, message.offset):
            fail_stop(f"the consumer skipped records before offset {message.offset} "
                      f"of partition {message.partition}")
        try:
            cmd = read_command(message.key, message.value)
        except Unprocessable as exc:
            self.dead_letter(message, exc)
            return
        plan = self.decider.plan(cmd)
        self.counted(type(cmd).__name__).inc()
        if not plan.events:
            self.metrics.repeats.inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("already decided", extra=self._fields(cmd, message, generation))
            return
        # The events are staged with the table changes, not sent (state/local.py): the
        # commit that carries this command's changes sends its events first, in the
        # same transaction. Nothing below awaits, so no commit falls between them: a
        # transaction holds all of the command (a withdrawal with the promotion into
        # the seat it frees) or none of it, and a redo after a crash finds it decided
        # and rightly writes nothing, or decides it again into the same event ids.
        # Not sending from here also keeps the agent deciding while a partition's
        # producer commits (it takes no record then), which faust's send waited for.
        traced = _traced(message)
        self.stage_events(message, plan, generation, traced)
        self.prepare(message)
        self.decider.apply(plan)
        for event in plan.events:
            decided, reason = outcome(event)
            self.outcomes(decided, reason).inc()
        self.metrics.processing.observe(perf_counter() - started)
        # No line per decision at INFO: at a thousand decisions a second it cost more
        # than deciding. processor_decisions_total counts them; LOG_LEVEL=DEBUG logs
        # each. A command whose caller traces it (the command API's `traced` header: a
        # request with its own X-Correlation-Id) is logged at INFO, so one grep of that
        # id still follows it through every component.
        level = logging.INFO if traced else logging.DEBUG
        if log.isEnabledFor(level):
            for event in plan.events:
                decided, reason = outcome(event)
                log.log(level, "decided", extra={
                    **self._fields(cmd, message, generation), "event_id": event.event_id,
                    "event_type": event.event_type, "outcome": decided,
                    "reason": reason or None})

    @staticmethod
    def _fields(cmd: Command, message: Message, generation: int) -> dict[str, object]:
        return {"correlation_id": cmd.correlation_id, "command_id": cmd.command_id,
                "signup_id": getattr(cmd, "signup_id", None), "course_id": cmd.course_id,
                "partition": message.partition, "offset": message.offset,
                "generation": generation}

    def stage_events(self, message: Message, plan: Plan, generation: int,
                     traced: bool = False) -> None:
        topic, now = self.p.settings.events_topic, int(time.time() * 1000)
        for event in plan.events:
            headers = event_headers(event, self.p.processor_id, generation, traced)
            self.local.stage_record(message.partition,
                                    OutRecord(topic, message.key, encode(event), headers, now))

    def prepare(self, message: Message) -> None:
        """The transaction of the message's partition will carry records: have it ready
        for them before the commit (transactions.py, DurableProducer.prepare)."""
        transactions = self.p.app.consumer.transactions
        if isinstance(transactions, SourcePartitionTransactionManager):
            transactions.prepare(message.tp)

    def dead_letter(self, message: Message, exc: Unprocessable) -> None:
        source = SourceRecord(message.topic, message.partition, message.offset,
                              message.key, message.value, header_pairs(message.headers))
        # The reason keeps its detail, as operators grep it; dlq.error repeats the detail.
        headers = dead_letter_headers(source, str(exc), utc_now(), error=exc.detail)
        self.local.stage_record(message.partition, OutRecord(
            self.p.settings.dlq_topic, message.key, message.value,
            headers, int(time.time() * 1000)))
        self.prepare(message)
        self.metrics.commands.labels("unprocessable").inc()
        self.metrics.dlq.labels(exc.reason).inc()
        log.warning("dead-lettered", extra={
            "reason": exc.reason, "topic": message.topic,
            "partition": message.partition, "offset": message.offset,
        })


def _children(metric: Any) -> Callable[..., Any]:
    """`metric.labels`, each label set's child kept after its first use."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*labels: str) -> Any:
        found = children.get(labels)
        if found is None:
            found = children[labels] = metric.labels(*labels)
        return found
    return child


def _traced(message: Message) -> bool:
    return any(key == TRACED_NAME for key, _ in header_pairs(message.headers))
