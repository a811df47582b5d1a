"""The trivial FastAPI app that the bench compares the command and query APIs with.

Run: BASELINE_PORT=8100 python -m proof.bench_baseline_app

Same framework, same uvicorn settings as `command_api/__main__.py` and `projections/api.py`
(one process, no access log, no server header, default event loop and HTTP parser), and
the same paths and answer shapes, but nothing behind them: no validation model, no
Kafka, no database. What is left is what HTTP, FastAPI and uvicorn cost on this machine.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import uvicorn
from fastapi import Body, FastAPI


def create_app() -> FastAPI:
    app = FastAPI(title="bench baseline")

    @app.post("/courses/{course_id}/signups", status_code=202)
    async def sign_up(course_id: str, body: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        """Accept any JSON object; answer like the command API."""
        return {"signup_id": str(uuid.uuid4()), "status": "pending"}

    @app.get("/baseline/{item}")
    async def read(item: str) -> dict[str, str]:
        """A constant answer of about the size of a sign-up decision."""
        return {"signup_id": item, "course_id": "baseline", "status": "accepted",
                "reason": "none"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("BASELINE_PORT", "8100")),
                log_config=None, access_log=False, server_header=False,
                timeout_graceful_shutdown=7)


if __name__ == "__main__":
    main()
