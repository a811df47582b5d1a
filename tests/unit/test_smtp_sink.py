"""The development SMTP sink: each message stored whole as one file, without an fsync per
message; a session however the client's bytes are split into chunks; pipelined commands
answered in one write."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.smtp_sink import FileSink, SinkProtocol, unstuff


class Transport(asyncio.Transport):
    """What the protocol writes, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def session(sink: FileSink, chunks: list[bytes]) -> Transport:
    transport = Transport()
    protocol = SinkProtocol(sink)
    protocol.connection_made(transport)
    for chunk in chunks:
        protocol.data_received(chunk)
    return transport


def replies(transport: Transport) -> list[int]:
    lines = b"".join(transport.writes).split(b"\r\n")
    return [int(line[:3]) for line in lines if line[3:4] == b" "]


def test_a_message_is_stored_whole_and_not_fsynced(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    stored = FileSink(tmp_path, set()).store("a@example.org", ["b@example.org"],
                                             b"Subject: hi\r\n\r\nhello\r\n")
    assert stored.read_bytes() == (b"X-Envelope-From: a@example.org\r\n"
                                   b"X-Envelope-To: b@example.org\r\n"
                                   b"Subject: hi\r\n\r\nhello\r\n")
    assert list(tmp_path.iterdir()) == [stored] and synced == []


MESSAGE = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nlast\r\n"
SESSION = (b"EHLO client\r\n"
           b"MAIL FROM:<a@example.org> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<b@example.org>\r\n"
           b"DATA\r\n"
           b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\nlast\r\n.\r\n"
           b"MAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n"
           b".\r\n"
           b"QUIT\r\n")


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=0), max_size=12))
def test_a_session_gives_the_same_files_and_answers_however_its_bytes_arrive(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int],
) -> None:
    folder = tmp_path_factory.mktemp("mail")
    transport = session(FileSink(folder, set()), _split(SESSION, cuts))
    assert replies(transport) == [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    assert transport.closed
    stored = sorted(p.read_bytes() for p in folder.glob("*.eml"))
    assert stored == sorted([
        b"X-Envelope-From: a@example.org\r\nX-Envelope-To: b@example.org\r\n" + MESSAGE,
        b"X-Envelope-From: a@example.org\r\nX-Envelope-To: c@example.org\r\n",
    ])
    assert not list(folder.glob("*.tmp"))


def test_pipelined_commands_are_answered_in_one_write(tmp_path: Path) -> None:
    transport = session(FileSink(tmp_path, set()), [
        b"EHLO client\r\n",
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n"])
    greeting, ehlo, pipelined, stored = transport.writes
    assert b"250-PIPELINING" in ehlo and b"250-SMTPUTF8" in ehlo
    assert pipelined == b"250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    assert stored.startswith(b"250 ") and len(list(tmp_path.glob("*.eml"))) == 1


def test_a_refused_domain_gets_a_550_that_quotes_the_address_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    transport = session(FileSink(tmp_path, {"rejected.invalid"}), [
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@Rejected.Invalid>\r\nDATA\r\n"
        b"RSET\r\n"])
    assert replies(transport) == [220, 250, 250, 550, 503, 250]
    assert b"550 5.1.1 <x@Rejected.Invalid>:" in b"".join(transport.writes)
    assert not list(tmp_path.iterdir())


def test_commands_out_of_order_are_refused(tmp_path: Path) -> None:
    transport = session(FileSink(tmp_path, set()), [
        b"MAIL FROM:<a@example.org>\r\nHELO c\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"MAIL FROM:<a@example.org>\r\nMAIL FROM:<a@example.org>\r\nBOGUS\r\nNOOP\r\n"])
    assert replies(transport) == [220, 503, 250, 503, 503, 250, 503, 500, 250]


def test_a_message_over_the_size_limit_is_refused_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    sink = FileSink(tmp_path, set())
    transport = Transport()
    protocol = SinkProtocol(sink, data_size_limit=100)
    protocol.connection_made(transport)
    protocol.data_received(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
    for _ in range(10):
        protocol.data_received(b"x" * 60 + b"\r\n")
    protocol.data_received(b".\r\nNOOP\r\n")
    assert replies(transport)[-2:] == [552, 250]
    assert not list(tmp_path.iterdir())


def test_unstuffing_removes_one_leading_dot_per_line() -> None:
    assert unstuff(b"..a\r\n.b\r\nc.\r\n...\r\n") == b".a\r\nb\r\nc.\r\n..\r\n"


def test_lower_case_commands_a_null_sender_and_a_bare_address_are_taken(tmp_path: Path) -> None:
    transport = session(FileSink(tmp_path, set()), [
        b"ehlo c\r\nmail from:<>\r\nrcpt to: b@example.org\r\ndata\r\nhi\r\n.\r\nquit\r\n"])
    assert replies(transport) == [220, 250, 250, 250, 354, 250, 221]
    [stored] = tmp_path.glob("*.eml")
    assert stored.read_bytes() == b"X-Envelope-From: \r\nX-Envelope-To: b@example.org\r\nhi\r\n"
