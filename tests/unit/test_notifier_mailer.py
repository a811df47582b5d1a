"""SMTP failures sorted into transient and permanent, server-wide and per message."""

from __future__ import annotations

import smtplib

import pytest

from notifier.mailer import classify


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    OSError(113, "No route to host"),
    smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
])
def test_connection_failures_are_transient_for_the_whole_server(exc: BaseException) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.server_wide, failure.reason) == (
        "transient", True, "connection_failed")


def test_a_refused_recipient_is_permanent_for_that_message() -> None:
    exc = smtplib.SMTPRecipientsRefused({"x@rejected.invalid": (550, b"5.1.1 mailbox unavailable")})
    failure = classify(exc)
    assert (failure.kind, failure.server_wide, failure.reason, failure.code) == (
        "permanent", False, "recipient_refused", 550)


def test_a_greylisted_recipient_is_transient() -> None:
    exc = smtplib.SMTPRecipientsRefused({"x@example.org": (450, b"4.2.0 greylisted")})
    assert classify(exc).kind == "transient"


def test_the_address_stays_out_of_the_loggable_fields() -> None:
    exc = smtplib.SMTPRecipientsRefused({"ann@example.org": (550, b"<ann@example.org> unknown")})
    failure = classify(exc)
    assert "ann@" not in failure.reason and "ann@" in failure.detail


@pytest.mark.parametrize("exc, kind", [
    (smtplib.SMTPDataError(554, b"5.7.1 rejected as spam"), "permanent"),
    (smtplib.SMTPDataError(451, b"4.3.0 try again later"), "transient"),
    (smtplib.SMTPSenderRefused(553, b"5.1.8 bad sender", "no-reply@x"), "permanent"),
    (smtplib.SMTPSenderRefused(452, b"4.3.1 insufficient storage", "no-reply@x"), "transient"),
    (smtplib.SMTPResponseException(552, b"5.3.4 too big"), "permanent"),
    (smtplib.SMTPResponseException(452, b"4.5.3 too many recipients"), "transient"),
])
def test_responses_go_by_their_code(exc: BaseException, kind: str) -> None:
    failure = classify(exc)
    assert failure.kind == kind and not failure.server_wide


def test_421_closes_the_session_for_everyone() -> None:
    failure = classify(smtplib.SMTPResponseException(421, b"4.3.2 shutting down"))
    assert (failure.kind, failure.server_wide) == ("transient", True)


@pytest.mark.parametrize("exc", [
    smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"),
    smtplib.SMTPConnectError(554, b"no service"),
    smtplib.SMTPHeloError(501, b"bad helo"),
])
def test_a_refused_session_waits_for_the_server_instead_of_dead_lettering(
    exc: BaseException,
) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.server_wide) == ("transient", True)


def test_no_smtputf8_is_permanent() -> None:
    exc = smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
    assert classify(exc).kind == "permanent"


def test_an_unknown_error_is_permanent_and_says_only_its_type() -> None:
    failure = classify(UnicodeEncodeError("ascii", "ä", 0, 1, "no"))
    assert (failure.kind, failure.reason, failure.detail) == (
        "permanent", "unexpected_error", "UnicodeEncodeError")
