"""Run one course-processor worker.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m course_processor

Environment: KAFKA_BOOTSTRAP_SERVERS (required), PARTITIONS (4), PROCESSOR_PORT (6066,
serves GET /metrics and GET /healthz), PROCESSING_GUARANTEE (exactly_once),
PROCESSOR_STORE (memory://), PROCESSOR_DATA_DIR, LOG_LEVEL (INFO), PROCESSOR_APP_ID
(course-processor: also the consumer group and the transactional.id prefix),
PROCESSOR_SESSION_TIMEOUT (10 s), PROCESSOR_COMMIT_INTERVAL (0.1 s),
PROCESSOR_LINGER (0.02 s). Start more
workers with the same PROCESSOR_APP_ID (and another PROCESSOR_PORT) to share the
partitions.
"""

from __future__ import annotations

import dataclasses
import logging.config
import os
import sys

from faust import Worker

from course_processor.admin import check_topics, ensure_changelogs
from course_processor.app import create_app
from course_processor.logs import logging_config
from course_processor.settings import Settings, SettingsError
from course_processor.web import add_routes


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
        logging.config.dictConfig(logging_config(settings.log_level))
        settings = dataclasses.replace(settings, partitions=check_topics(settings))
        processor = create_app(settings)
        ensure_changelogs(settings, processor.changelog_topics())
    except SettingsError as exc:
        sys.exit(f"course_processor: {exc}")
    add_routes(processor)
    worker = Worker(
        processor.app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
