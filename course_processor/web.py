"""HTTP endpoints on the faust web server: GET /metrics (Prometheus) and GET /healthz."""

from __future__ import annotations

from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from course_processor.app import Processor

# aiohttp takes the charset apart from the content type.
CONTENT_TYPE_PLAIN = CONTENT_TYPE_LATEST.split("; charset")[0]


def add_routes(p: Processor) -> None:
    @p.app.page("/metrics", name="processor_metrics")
    async def metrics(self: View, request: Request) -> Response:
        return self.bytes(p.metrics.exposition(), content_type=CONTENT_TYPE_PLAIN)

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
            "assigned": sorted(tp.partition for tp in assignment
                               if tp.topic == p.settings.commands_topic),
            "rebalancing": bool(p.app.rebalancing),
            "recovering": bool(p.app.in_recovery),
        })
