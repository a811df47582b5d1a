"""The workers' small HTTP server: GET /healthz, /readyz and /metrics from a daemon thread.

/healthz says whether the process is alive (its loop comes round), /readyz whether it
can do its work now (a 503 says why not); both answer JSON. The APIs serve the same
paths from their own routers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

_JSON = "application/json"


def serve_health(host: str, port: int, *, alive: Callable[[], bool],
                 ready: Callable[[], tuple[bool, str]], metrics: Callable[[], bytes],
                 dead_status: str = "stalled") -> ThreadingHTTPServer:
    """Serve until `shutdown()`; `dead_status` is the /healthz status when not alive."""

    def answer(path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, metrics()
        if path == "/healthz":
            ok = alive()
            return 200 if ok else 503, _JSON, _body({"status": "ok" if ok else dead_status})
        if path == "/readyz":
            is_ready, why = ready()
            return 200 if is_ready else 503, _JSON, _body(
                {"status": "ready"} if is_ready else {"status": "unavailable", "reason": why})
        return 404, _JSON, _body({"detail": "Not Found"})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
            status, content_type, body = answer(self.path.split("?", 1)[0])
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def _body(content: dict[str, str]) -> bytes:
    return json.dumps(content, separators=(",", ":")).encode()
