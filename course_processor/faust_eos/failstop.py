"""Ending the process at once when the processor cannot go on correctly."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger(__name__)

FAIL_STOP_EXIT_CODE = 70


def fail_stop(reason: str, exc: BaseException | None = None) -> NoReturn:
    """Log and end the process now, without committing anything (same as kill -9).

    Whatever this worker decided since its last commit is aborted with its open
    transactions, and the worker that owns the partition next decides it again from
    the committed state: the path every kill -9 test proves.
    """
    log.critical("fail-stop: %s", reason, exc_info=exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)
