"""The development SMTP sink stores each message whole, without an fsync per message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from stack.smtp_sink import FileSink


def test_a_message_is_stored_whole_and_not_fsynced(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    envelope = Envelope()
    envelope.mail_from, envelope.rcpt_tos = "a@example.org", ["b@example.org"]
    envelope.original_content = b"Subject: hi\r\n\r\nhello\r\n"
    stored = FileSink(tmp_path, set()).store(envelope)
    assert stored.read_bytes() == (b"X-Envelope-From: a@example.org\r\n"
                                   b"X-Envelope-To: b@example.org\r\n"
                                   b"Subject: hi\r\n\r\nhello\r\n")
    assert list(tmp_path.iterdir()) == [stored] and synced == []
