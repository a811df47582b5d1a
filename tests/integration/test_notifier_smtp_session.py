"""The notifier's SMTP adapter keeps one session for many e-mails and opens a new one only
after a failure, against a real SMTP server (the project's sink, counting its sessions)."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifier.mailer import MailError, SmtpMailer
from notifier.settings import Settings
from stack.ports import free_port
from stack.smtp_sink import FileSink, SinkProtocol

pytestmark = pytest.mark.integration


class CountingServer:
    """The sink on a free port, in a thread of its own; `sessions` counts connections."""

    def __init__(self, mail_dir: Path) -> None:
        self.port = free_port()
        self.sessions = 0
        self.transports: list[asyncio.BaseTransport] = []
        self.sink = FileSink(mail_dir, set())
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def start(self) -> None:
        server = self

        class Counting(SinkProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server.sessions += 1
                server.transports.append(transport)
                super().connection_made(transport)

        async def serve() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: Counting(self.sink, hostname="sink.test"),
                host="127.0.0.1", port=self.port)

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def stop(self) -> None:
        """Closes the listener and every open session, as a restarted server would."""
        server, self.server = self.server, None
        assert server is not None

        async def close() -> None:
            server.close()
            for transport in self.transports:
                transport.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[CountingServer]:
    server = CountingServer(tmp_path)
    server.start()
    yield server
    if server.server is not None:
        server.stop()
    server.loop.call_soon_threadsafe(server.loop.stop)


def _mail(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "no-reply@example.org", "s@example.org", f"#{n}"
    msg.set_content("hello")
    return msg


def test_many_e_mails_share_one_session_and_a_failure_opens_a_new_one(
    smtp_server: CountingServer, tmp_path: Path,
) -> None:
    mailer = SmtpMailer(Settings(kafka_bootstrap_servers="unused:9092",
                                 database_url="postgresql://unused/db",
                                 smtp_port=smtp_server.port, smtp_timeout_seconds=5))
    for n in range(20):
        mailer.send(_mail(n).as_bytes(), "s@example.org")
    assert smtp_server.sessions == 1
    assert len(list(tmp_path.glob("*.eml"))) == 20

    smtp_server.stop()  # the server goes away with the session open
    with pytest.raises(MailError) as failed:
        mailer.send(_mail(20).as_bytes(), "s@example.org")
    assert failed.value.failure.kind == "transient" and failed.value.failure.server_wide

    smtp_server.start()
    for n in range(21, 31):
        mailer.send(_mail(n).as_bytes(), "s@example.org")
    mailer.close()
    assert smtp_server.sessions == 2  # one new session after the failure, for all ten
    assert len(list(tmp_path.glob("*.eml"))) == 30


def _settings(port: int) -> Settings:
    return Settings(kafka_bootstrap_servers="unused:9092", database_url="postgresql://unused/db",
                    smtp_port=port, smtp_timeout_seconds=5)


def test_a_server_with_pipelining_gets_each_e_mail_in_two_writes_and_stores_it_whole(
    smtp_server: CountingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[bytes] = []
    plain_send = smtplib.SMTP.send

    def counted(self: smtplib.SMTP, data: bytes | str) -> None:
        writes.append(data if isinstance(data, bytes) else data.encode())
        plain_send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", counted)
    mailer = SmtpMailer(_settings(smtp_server.port))
    mailer.send(b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend", "s@example.org")
    sent = len(writes)
    mailer.send(_mail(1).as_bytes(), "t@example.org")
    # MAIL, RCPT and DATA in one write, the message in the next (smtplib's sendmail: four).
    assert len(writes) - sent == 2
    mailer.close()
    stored = sorted(tmp_path.glob("*.eml"), key=lambda p: p.read_bytes().count(b"dots"))
    assert stored[-1].read_bytes().endswith(
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n")
    assert b"X-Envelope-To: t@example.org" in stored[0].read_bytes()


def test_a_refused_recipient_on_a_pipelined_session_fails_that_message_only(
    tmp_path: Path,
) -> None:
    server = CountingServer(tmp_path)
    server.sink.reject_domains = {"rejected.invalid"}
    server.start()
    try:
        mailer = SmtpMailer(_settings(server.port))
        with pytest.raises(MailError) as refused:
            mailer.send(_mail(0).as_bytes(), "x@rejected.invalid")
        failure = refused.value.failure
        assert (failure.kind, failure.reason, failure.code, failure.server_wide) == (
            "permanent", "recipient_refused", 550, False)
        mailer.send(_mail(1).as_bytes(), "s@example.org")  # the same session, reset
        mailer.close()
        assert server.sessions == 1
        assert [p.read_bytes().count(b"#1") for p in tmp_path.glob("*.eml")] == [1]
    finally:
        server.stop()
        server.loop.call_soon_threadsafe(server.loop.stop)
