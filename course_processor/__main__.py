"""Run one course-processor worker.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 PSEUDONYM_SECRET=... .venv/bin/python -m course_processor

Environment: KAFKA_BOOTSTRAP_SERVERS and PSEUDONYM_SECRET (the key of the seat keys'
HMAC, the same for every worker) are required; PARTITIONS (4), PROCESSOR_PORT (6066,
serves GET /metrics, /healthz and /readyz), PROCESSOR_DATA_DIR (the local state: one
RocksDB per owned partition), PROCESSOR_STATE_MEMORY_MB (64: the RocksDB memory of
the worker, all partitions together), LOG_LEVEL (INFO), PROCESSOR_APP_ID (course-processor:
also the consumer group and the transactional.id prefix), PROCESSOR_SESSION_TIMEOUT
(10 s), PROCESSOR_COMMIT_INTERVAL (0.1 s: the most between two commits while input
keeps coming), PROCESSOR_COMMIT_MIN_INTERVAL (0.01 s: the least; a worker that has
decided all it fetched commits then), PROCESSOR_FETCH_MAX_WAIT (0.1 s), PROCESSOR_LINGER (0.02 s),
PROCESSOR_BUILD_FROM_EVENTS (true). Start more workers with the same PROCESSOR_APP_ID
(and another PROCESSOR_PORT and PROCESSOR_DATA_DIR) to share the partitions.
"""

from __future__ import annotations

import logging.config
import os
import sys

from faust import Worker

from course_processor.admin import check_topics, ensure_changelogs
from course_processor.bootstrap import bootstrap
from course_processor.faust_eos.app import Processor
from course_processor.logs import logging_config
from course_processor.settings import Settings, SettingsError
from course_processor.state.memory import bound_heap


def main() -> None:
    bound_heap()  # before any thread (state/memory.py)
    try:
        settings = Settings.from_env(os.environ)
        logging.config.dictConfig(logging_config(settings.log_level))
        settings = settings.model_copy(update={"partitions": check_topics(settings)})
        processor = bootstrap(settings)
        ensure_changelogs(settings, list(processor.changelog_topics().values()))
    except SettingsError as exc:
        sys.exit(f"course_processor: {exc}")
    new_worker(processor, settings).execute_from_commandline()


def new_worker(processor: Processor, settings: Settings) -> Worker:
    worker = Worker(
        processor.app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    # No terminal spinner. At LOG_LEVEL=WARNING and above faust keeps one and sets the
    # root logger to DEBUG for it, so every debug line of the hot path (one per
    # decision) was built and handed to the spinner: about 3% of the processor's time
    # in a drain, for a spinner nobody sees in a log file.
    worker.spinner = None
    return worker


if __name__ == "__main__":
    main()
