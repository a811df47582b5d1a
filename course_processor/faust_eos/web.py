"""HTTP endpoints on the faust web server: GET /metrics (Prometheus), /healthz and /readyz.

These are the only pages served: faust's own (its table and router views among
them) are off (app.py, OwnPagesWeb).
"""

from __future__ import annotations

from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from course_processor.faust_eos.app import Processor

# aiohttp takes the charset apart from the content type.
CONTENT_TYPE_PLAIN = CONTENT_TYPE_LATEST.split("; charset")[0]


def add_routes(p: Processor) -> None:
    @p.app.page("/metrics", name="processor_metrics")
    async def metrics(self: View, request: Request) -> Response:
        update_lag(p)
        p.metrics.state_memory.set(p.runtime.local.memory.usage())
        return self.bytes(p.metrics.render(), content_type=CONTENT_TYPE_PLAIN)

    @p.app.page("/readyz", name="processor_readyz")
    async def readyz(self: View, request: Request) -> Response:
        ready, why = readiness(p)
        body = {"status": "ready"} if ready else {"status": "unavailable", "reason": why}
        return self.json(body, status=200 if ready else 503)

    @p.app.page("/healthz", name="processor_healthz")
    async def healthz(self: View, request: Request) -> Response:
        # 200 while the process runs; the rest says whether it is deciding right now.
        try:
            assignment = p.app.consumer.assignment()
        except ConsumerNotStarted:
            assignment = set()
        return self.json({
            "status": "ok",
            "processor_id": p.processor_id,
            "generation": p.app.consumer_generation_id,
            "assigned": sorted(tp.partition for tp in assignment
                               if tp.topic == p.settings.commands_topic),
            "rebalancing": bool(p.app.rebalancing),
            "recovering": bool(p.app.in_recovery),
            "local_state": {"partitions": sorted(p.runtime.local.partitions),
                            "staged": p.runtime.local.staged_count()},
        })


def readiness(p: Processor) -> tuple[bool, str]:
    """(ready, why not): a member of the group, not rebalancing, tables restored."""
    try:
        p.app.consumer.assignment()
    except ConsumerNotStarted:
        return False, "the consumer has not started"
    if not p.app.consumer_generation_id:
        return False, "not in the consumer group yet"
    if p.app.rebalancing:
        return False, "rebalancing"
    if p.app.in_recovery:
        return False, "restoring the tables"
    return True, ""


def update_lag(p: Processor) -> None:
    """Lag per owned command partition, computed when scraped: high watermark minus
    the next offset this worker will read (faust's own bookkeeping, no broker call)."""
    try:
        consumer = p.app.consumer
        owned = [tp for tp in consumer.assignment() if tp.topic == p.commands.get_topic_name()]
    except ConsumerNotStarted:
        return
    p.metrics.lag.clear()
    for tp in owned:
        high = consumer.highwater(tp)
        # Faust keeps no public accessor for its read and committed positions.
        read = getattr(consumer, "_read_offset", {}).get(tp)
        committed = getattr(consumer, "_committed_offset", {}).get(tp)
        if high is None:
            continue
        next_offset = read + 1 if read is not None else committed or 0
        p.metrics.lag.labels(str(tp.partition)).set(max(high - next_offset, 0))
