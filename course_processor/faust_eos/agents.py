"""The agent: each command on course-commands becomes at most one event on course-events.

Per command: read it, decide it against the tables (deciding/handler.py, which asks
deciding/domain.py), send the event. The table changes, the event and the command's
offset are one Kafka transaction (transactions.py). A command already decided (a
repeated request) is acknowledged and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter

import faust
from faust.types import Message

from course_processor.deciding.commands import Unprocessable, read_command
from course_processor.deciding.handler import Decider, Plan, utc_now
from course_processor.deciding.wire import event_headers, outcome
from course_processor.faust_eos.app import Processor
from course_processor.faust_eos.continuity import Continuity
from course_processor.faust_eos.failstop import fail_stop
from course_processor.faust_eos.tables import StagedStore, TableView
from schemas.codec import encode
from schemas.messages import Command
from service_kit.deadletter import dead_letter_headers
from service_kit.records import SourceRecord, header_pairs

log = logging.getLogger("course_processor")


def register(p: Processor) -> None:
    handler = CommandHandler(p)

    # concurrency=1: one command at a time, so a course's commands are decided in
    # partition order, which is the order the command API wrote them.
    @p.app.agent(p.commands, name="course_processor.decide", concurrency=1)
    async def decide(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                await handler.handle(event.message)
            except Exception as exc:
                # Not acked, not committed: a restart decides this command again.
                fail_stop("a command could not be processed", exc)


def _oldest(table: faust.types.TableT) -> Callable[[int], list[str]]:
    store = table.data
    assert isinstance(store, StagedStore)
    return lambda limit: [store._decode_key(k) for k in store.oldest_keys(limit)]  # noqa: SLF001


def _first(table: faust.types.TableT) -> Callable[[str, int], list[str]]:
    store = table.data
    assert isinstance(store, StagedStore)

    def first(prefix: str, limit: int) -> list[str]:
        # Keys are JSON text ('"<course>/<ticket>"'): the encoded prefix without its
        # closing quote is a byte prefix of every key that starts with `prefix`.
        raw = store._encode_key(prefix)[:-1]  # noqa: SLF001
        return [store._decode_key(k) for k in store.first_keys(raw, limit)]  # noqa: SLF001
    return first


class CommandHandler:
    def __init__(self, p: Processor) -> None:
        self.p = p
        self.metrics = p.metrics
        # The tables are co-partitioned with course-commands: the worker that owns a
        # course's partition is the only reader and writer of that course's entries.
        self.decider = Decider(TableView(p.courses), TableView(p.seats),
                               TableView(p.decided), p.settings.secret,
                               oldest=_oldest(p.decided), places=TableView(p.places),
                               waiting=TableView(p.waiting), first=_first(p.waiting))
        self.continuity = Continuity()

    async def handle(self, message: Message) -> None:
        started = perf_counter()
        generation = self.p.app.consumer_generation_id
        if self.continuity.skipped(generation, message.partition, message.offset):
            fail_stop(f"the consumer skipped records before offset {message.offset} "
                      f"of partition {message.partition}")
        try:
            cmd = read_command(message.key, message.value)
        except Unprocessable as exc:
            await self.dead_letter(message, exc)
            return
        plan = self.decider.plan(cmd)
        self.metrics.commands.labels(type(cmd).__name__).inc()
        if not plan.events:
            self.metrics.repeats.inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("already decided", extra=self._fields(cmd, message, generation))
            return
        # The events first, then the table changes. A commit may run while this command
        # is decided (faust commits from another task), and a crash may follow it, so
        # a transaction can end between any two of the command's records. Sent in this
        # order, a transaction that holds the command's table changes ("decided") also
        # holds its event: after a crash the redo finds it decided and rightly writes
        # nothing. The other way round, the redo could find it decided without its
        # event in the log, and it would have no decision at all. A transaction that
        # holds the event but not the changes is redone into the same decision: the
        # repeated record (same event_id) that the contract allows after a crash.
        # (The changes are only staged here; the commit writes their changelog
        # records: transactions.py.)
        # A withdrawal and the promotion into the seat it frees are sent holding the
        # commit lock (state/runtime.py): the two are in one transaction, never split.
        if len(plan.events) > 1:
            async with self.p.runtime.atomic:
                await self.send(message, plan, generation)
        else:
            await self.send(message, plan, generation)
        self.decider.apply(plan)
        for event in plan.events:
            decided, reason = outcome(event)
            self.metrics.decisions.labels(decided, reason).inc()
        self.metrics.processing.observe(perf_counter() - started)
        # No line per decision at INFO: at a thousand decisions a second it cost more
        # than deciding. processor_decisions_total counts them; LOG_LEVEL=DEBUG logs
        # each. A command whose caller traces it (the command API's `traced` header: a
        # request with its own X-Correlation-Id) is logged at INFO, so one grep of that
        # id still follows it through every component.
        level = logging.INFO if _traced(message) else logging.DEBUG
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

    async def send(self, message: Message, plan: Plan, generation: int) -> None:
        for event in plan.events:
            headers = event_headers(event, self.p.processor_id, generation)
            await self.p.events.send(key=message.key, value=encode(event), headers=headers)

    async def dead_letter(self, message: Message, exc: Unprocessable) -> None:
        source = SourceRecord(message.topic, message.partition, message.offset,
                              message.key, message.value, header_pairs(message.headers))
        # The reason keeps its detail, as operators grep it; dlq.error repeats the detail.
        headers = dead_letter_headers(source, str(exc), utc_now(), error=exc.detail)
        await self.p.dead_letters.send(key=message.key, value=message.value, headers=headers)
        self.metrics.commands.labels("unprocessable").inc()
        self.metrics.dlq.labels(exc.reason).inc()
        log.warning("dead-lettered", extra={
            "reason": exc.reason, "topic": message.topic,
            "partition": message.partition, "offset": message.offset,
        })


def _traced(message: Message) -> bool:
    return any(key == "traced" for key, _ in header_pairs(message.headers))
