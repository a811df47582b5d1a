"""Run the command API: `python -m command_api` (`make up` starts it this way).

Settings come from the environment (see `command_api/settings.py`): KAFKA_BOOTSTRAP_SERVERS,
ADMIN_TOKEN, DATABASE_URL (the key store) and PSEUDONYM_SECRET are required; it listens on
127.0.0.1:$COMMAND_API_PORT (default 8000), and HOST overrides the interface. Logs go to
stderr as JSON lines.
"""

from __future__ import annotations

import uvicorn

from command_api.app import create_app
from command_api.settings import Settings
from service_kit.logs import configure_logging
from service_kit.settings import load_settings

# Graceful shutdown waits this long beyond the produce timeout for in-flight requests.
_SHUTDOWN_GRACE_SECONDS = 2


def main() -> None:
    settings = load_settings(Settings, "command_api")
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
