"""SMTP failures sorted into transient and permanent, server-wide and per message."""

from __future__ import annotations

import smtplib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mailer import _crlf, _quoted, classify, enhanced_status


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


POSTFIX_REFUSAL = b"5.1.1 <ann@example.org>: Recipient address rejected: User unknown"


@pytest.mark.parametrize("exc", [
    smtplib.SMTPRecipientsRefused({"ann@example.org": (550, POSTFIX_REFUSAL)}),
    smtplib.SMTPDataError(550, POSTFIX_REFUSAL),
    smtplib.SMTPResponseException(550, POSTFIX_REFUSAL),
    smtplib.SMTPSenderRefused(550, POSTFIX_REFUSAL, "no-reply@x"),
    smtplib.SMTPAuthenticationError(550, POSTFIX_REFUSAL),
])
def test_only_the_codes_of_a_reply_are_kept_never_its_text(exc: BaseException) -> None:
    failure = classify(exc)
    assert (failure.code, failure.enhanced, failure.status) == (550, "5.1.1", "550 5.1.1")
    assert "ann" not in repr(failure)


@pytest.mark.parametrize("text, enhanced", [
    (b"5.1.1 mailbox unavailable", "5.1.1"),
    (b" 4.7.1 greylisted, try later", "4.7.1"),
    (b"Requested action not taken: mailbox unavailable", None),
    (b"<ann@example.org> 5.1.1 unknown", None),
    (b"5.1.1.7 not a code", None),
    (b"", None),
])
def test_the_enhanced_status_is_only_read_from_the_start(text: bytes, enhanced: str | None) -> None:
    assert enhanced_status(text) == enhanced


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
    failure = classify(UnicodeEncodeError("ascii", "ann@exämple.org", 0, 1, "no"))
    assert (failure.kind, failure.reason, failure.status) == (
        "permanent", "unexpected_error", "UnicodeEncodeError")
    assert "ann" not in repr(failure)


def test_an_unsupported_feature_keeps_no_text() -> None:
    failure = classify(smtplib.SMTPNotSupportedError("SMTPUTF8 not supported for zoë@x.org"))
    assert (failure.reason, failure.status) == ("not_supported", "")


def test_every_line_goes_out_ended_by_crlf() -> None:
    # smtplib converts line ends of str messages only; a server refuses a bytes message
    # with bare LFs as one over-long line.
    assert _crlf(b"A: 1\nB: 2\r\n\r\nbody\rend\n") == b"A: 1\r\nB: 2\r\n\r\nbody\r\nend\r\n"


_ATOMS = st.text(alphabet="ab.+-_!#'*/=?^`{|}~é <>\"(),;:[]\\", max_size=5)


@settings(max_examples=1000)
@given(st.tuples(_ATOMS, _ATOMS).map("@".join) | st.text(alphabet="a.@<> \"", max_size=8))
def test_addresses_are_quoted_as_smtplib_quotes_them(address: str) -> None:
    assert _quoted(address) == smtplib.quoteaddr(address)
