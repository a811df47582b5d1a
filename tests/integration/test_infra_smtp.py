"""The development SMTP sink: one file per message, permanent rejection for a test domain."""

from __future__ import annotations

import email
import email.policy
import smtplib
import uuid
from email.message import EmailMessage

import pytest

from tests.infra import Infra


def _message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "courses@example.org"
    msg["To"] = to
    msg["Subject"] = f"Probe {uuid.uuid4()}"
    msg.set_content("Grüße, Zoë")
    return msg


def test_a_message_becomes_one_file(infra: Infra) -> None:
    if infra.mail_dir is None:
        pytest.fail("the mail sink test needs the project's own SMTP sink (unset SMTP_HOST)")
    msg = _message("ann@example.org")
    with smtplib.SMTP(infra.smtp_host, infra.smtp_port, timeout=10) as client:
        client.send_message(msg)
    # The sink stores before it answers 250, so the file is there when send_message returns.
    stored = [p for p in infra.mail_dir.glob("*.eml") if msg["Subject"] in p.read_text()]
    assert len(stored) == 1
    parsed = email.message_from_bytes(stored[0].read_bytes(), policy=email.policy.default)
    assert parsed["To"] == "ann@example.org"
    assert parsed.get_content().strip() == "Grüße, Zoë"


def test_the_reject_domain_gets_a_permanent_error(infra: Infra) -> None:
    with smtplib.SMTP(infra.smtp_host, infra.smtp_port, timeout=10) as client, \
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.send_message(_message("nobody@rejected.invalid"))
    code, _ = refused.value.recipients["nobody@rejected.invalid"]
    assert code == 550
