"""Starts the development SMTP sink (stack/smtp_sink.py) as a component."""

from __future__ import annotations

import smtplib

from stack.config import ROOT, StackConfig
from stack.procs import (
    StackError,
    is_running,
    log_file,
    port_open,
    spawn,
    taken_message,
    wait_ready,
)

NAME = "smtp"


def start(config: StackConfig) -> bool:
    if is_running(config, NAME):
        return False
    if port_open(config.smtp_port):
        raise StackError(taken_message(NAME, config.smtp_port, "SMTP_PORT"))
    argv = [config.python, "-m", "stack.smtp_sink", "--port", str(config.smtp_port),
            "--mail-dir", str(config.mail_dir)]
    pid = spawn(config, NAME, argv, cwd=ROOT)
    wait_ready(lambda: _answers(config), 20, "smtp (sink)", log_file(config, NAME), pid)
    return True


def _answers(config: StackConfig) -> bool:
    with smtplib.SMTP("127.0.0.1", config.smtp_port, timeout=2) as client:
        return client.noop()[0] == 250
