"""Run the command API: `python -m command_api` (`make up` starts it this way).

Settings come from the environment (see `command_api/settings.py`): KAFKA_BOOTSTRAP_SERVERS,
ADMIN_TOKEN, DATABASE_URL (the key store) and PSEUDONYM_SECRET are required; it listens on
127.0.0.1:$COMMAND_API_PORT (default 8000), and HOST overrides the interface. Logs go to
stderr as JSON lines.
"""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from command_api.app import create_app
from command_api.settings import Settings
from service_kit.logs import configure_logging

# Graceful shutdown waits this long beyond the produce timeout for in-flight requests.
_SHUTDOWN_GRACE_SECONDS = 2


def main() -> None:
    try:
        settings = Settings()  # type: ignore[call-arg]  # the environment fills it in
    except ValidationError as exc:
        # Name the bad variables without echoing their values: one of them is a secret.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        sys.exit(f"command_api: invalid settings: {problems}")
    configure_logging(settings.log_level, "command-api")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.command_api_port,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # RequestContextMiddleware writes one line per request
        server_header=False,
        timeout_graceful_shutdown=int(settings.produce_timeout_seconds) + _SHUTDOWN_GRACE_SECONDS,
    )


if __name__ == "__main__":
    main()
