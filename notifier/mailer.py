"""SMTP adapter: one reused connection, reconnects, and failures sorted by what helps.

A `SendFailure` says whether waiting can help (transient) or not (permanent), and whether
the failure is the server's as a whole (every message would fail now: refused or reset
connection, timeout, greeting or login refused) or this one message's (a refused
recipient, a rejected body). Its `reason` and `code` are safe to log: the server's own
text is kept apart, as it often quotes the recipient's address.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal

from notifier.settings import Settings

Kind = Literal["transient", "permanent"]

# A connection unused this long is checked with NOOP before a message goes out on it:
# servers drop idle clients, and a failed NOOP is safe to retry where a failed DATA is not.
IDLE_CHECK_SECONDS = 5.0


# An enhanced status code opens a reply's text: class.subject.detail (RFC 3463).
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


@dataclass(frozen=True)
class SendFailure:
    kind: Kind
    reason: str
    code: int | None = None
    server_wide: bool = False
    enhanced: str | None = None  # e.g. "5.1.1"; the rest of the server's text is dropped
    exception: str | None = None  # the type's name only: an exception's text may quote input

    @property
    def status(self) -> str:
        """What may be stored or logged of the failure: `550 5.1.1`, `550`, a type name or ''."""
        parts = (self.code, self.enhanced, self.exception)
        return " ".join(str(part) for part in parts if part is not None)


class MailError(Exception):
    def __init__(self, failure: SendFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _by_code(code: int, reason: str, text: bytes | str, server_wide: bool = False
             ) -> SendFailure:
    kind: Kind = "permanent" if code >= 500 else "transient"
    return SendFailure(kind, reason, code, server_wide, enhanced_status(text))


def enhanced_status(text: bytes | str) -> str | None:
    """The enhanced status code a reply's text starts with, and nothing else of it."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
    found = _ENHANCED.match(raw.lstrip())
    return found.group(1) if found else None


def classify(exc: BaseException) -> SendFailure:
    """What a failure of one send means for retrying it."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        answers = list(exc.recipients.values())
        code, text = max(answers, default=(550, b""), key=lambda answer: answer[0])
        # Any 4xx among them: the server may take it later.
        transient = any(400 <= c < 500 for c, _ in answers)
        return SendFailure("transient" if transient else "permanent", "recipient_refused",
                           code, False, enhanced_status(text))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # E.g. an internationalised address and a server without SMTPUTF8.
        return SendFailure("permanent", "not_supported")
    if isinstance(exc, (smtplib.SMTPAuthenticationError, smtplib.SMTPHeloError,
                        smtplib.SMTPConnectError)):
        # The session, not the message: dead-lettering every e-mail because of a wrong
        # password or a refused greeting would be wrong, so wait for the server.
        return SendFailure("transient", "server_refused_session", exc.smtp_code, True,
                           enhanced_status(exc.smtp_error))
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return _by_code(exc.smtp_code, "sender_refused", exc.smtp_error)
    if isinstance(exc, smtplib.SMTPDataError):
        return _by_code(exc.smtp_code, "data_rejected", exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        # 421 means the server is closing the session for everyone.
        return _by_code(exc.smtp_code, "smtp_error", exc.smtp_error,
                        server_wide=exc.smtp_code == 421)
    if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
        # Refused or reset connection, timeout, TLS failure, DNS: nothing reached the server.
        return SendFailure("transient", "connection_failed", None, True,
                           exception=type(exc).__name__)
    return SendFailure("permanent", "unexpected_error", exception=type(exc).__name__)


_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


def _crlf(msg: bytes) -> bytes:
    """Every line ended by CRLF, as SMTP wants (smtplib converts only str messages)."""
    return _LINE_END.sub(b"\r\n", msg)


_LEADING_DOT = re.compile(rb"(?m)^\.")
# An address smtplib.quoteaddr would only wrap in angle brackets: no display name, quote,
# comment, route or space for email.utils.parseaddr (its cost, per address) to sort out.
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


def _quoted(address: str) -> str:
    """`smtplib.quoteaddr(address)`, without parsing the common plain address."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _rset(client: smtplib.SMTP) -> None:
    """Back to a clean session after a refused transaction (as smtplib's own sendmail)."""
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        client.rset()


def send_pipelined(client: smtplib.SMTP, sender: str, recipient: str, msg: bytes,
                   options: list[str]) -> None:
    """One transaction in two round trips instead of four (RFC 2920 PIPELINING): MAIL,
    RCPT and DATA in one write, their three answers read together, then the message.
    Raises what smtplib's `sendmail` raises for the same answers, so `classify` reads both
    alike; the message goes out only after the server's `354`, never after a refusal.
    `msg` has CRLF line ends already (`_crlf`)."""
    if any(c in part for part in (sender, recipient) for c in "\r\n"):
        raise ValueError("a line break in an address")
    extra = "".join(f" {option}" for option in options)
    commands = (f"MAIL FROM:{_quoted(sender)}{extra}\r\n"
                f"RCPT TO:{_quoted(recipient)}\r\nDATA\r\n")
    client.send(commands.encode("utf-8" if options else "ascii"))
    (mail, mail_text), (rcpt, rcpt_text), (data, data_text) = (
        client.getreply(), client.getreply(), client.getreply())
    for code, text in ((mail, mail_text), (rcpt, rcpt_text), (data, data_text)):
        if code == 421:  # the server is closing the session for everyone
            client.close()
            raise smtplib.SMTPResponseException(code, text)
    if mail != 250:
        _rset(client)
        raise smtplib.SMTPSenderRefused(mail, mail_text, sender)
    if rcpt not in (250, 251):
        _rset(client)
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt, rcpt_text)})
    if data != 354:
        _rset(client)
        raise smtplib.SMTPDataError(data, data_text)
    body = _LEADING_DOT.sub(b"..", msg)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    client.send(body + b".\r\n")
    code, text = client.getreply()
    if code == 421:
        client.close()
        raise smtplib.SMTPResponseException(code, text)
    if code != 250:
        _rset(client)
        raise smtplib.SMTPDataError(code, text)


class SmtpMailer:
    """Sends e-mails over one SMTP session, opened on first use and after any failure."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sender = parseaddr(settings.mail_from)[1] or settings.mail_from
        self._client: smtplib.SMTP | None = None
        self._last_used = 0.0

    def send(self, msg: bytes, recipient: str) -> None:
        """Hand `msg` (the message's bytes) to the server for `recipient`; raises MailError
        if it did not take it. An internationalised address needs the server's SMTPUTF8."""
        try:
            client = self._session()
            options: list[str] = []
            if not (recipient.isascii() and self._sender.isascii()):
                if not client.has_extn("smtputf8"):
                    raise smtplib.SMTPNotSupportedError(
                        "the server does not support SMTPUTF8")
                options = ["SMTPUTF8", "BODY=8BITMIME"]
            if client.has_extn("pipelining"):
                send_pipelined(client, self._sender, recipient, _crlf(msg), options)
            else:
                client.sendmail(self._sender, [recipient], _crlf(msg), mail_options=options)
        except Exception as exc:
            failure = classify(exc)
            # smtplib resets the session itself after a refused sender, recipient or
            # body; after anything else the session is in an unknown state.
            if not isinstance(exc, (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
                                    smtplib.SMTPDataError)):
                self.close()
            raise MailError(failure) from exc
        self._last_used = time.monotonic()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()

    def _session(self) -> smtplib.SMTP:
        if self._client is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                self._client.noop()
            except (smtplib.SMTPException, OSError):
                self.close()
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        client: smtplib.SMTP
        if s.smtp_security == "tls":
            client = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
        try:
            client.ehlo()
            if s.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if s.smtp_username:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                client.login(s.smtp_username, password)
        except BaseException:
            client.close()
            raise
        return client
