"""A development SMTP server that stores each message it receives as one file.

Run: python -m stack.smtp_sink --port 2525 --mail-dir .run/mail

Every accepted message becomes `<mail-dir>/<received>-<uuid>.eml`: the envelope as
`X-Envelope-From`/`X-Envelope-To` lines, then the message as the client sent it (dots
unstuffed), written to a temporary name and renamed, so a reader never sees half a
message (not fsynced: a development server, cheap per message). It answers `250` to
DATA only once the file is there. Recipients in a domain listed in
SMTP_SINK_REJECT_DOMAINS (default `rejected.invalid` and `refused.example.org`, which
the command API accepts) get a permanent `550` that quotes the address, as Postfix's
does, to exercise the senders' dead-letter path and prove that no server text is kept.

It announces PIPELINING (RFC 2920), as Postfix does, and SMTPUTF8 and 8BITMIME. The
protocol is a small `asyncio.Protocol` of its own rather than aiosmtpd: aiosmtpd reads a
message line by line through a stream reader and answers every command with a write of
its own, which made this sink cost the machine about as much CPU per e-mail as the
notifier that sends them (issue 19). Here every chunk the client sends is scanned for
whole command lines, or for the end of the message, with a few `bytes` calls; the
answers to a chunk go out in one write (MAIL, RCPT and DATA pipelined: one answer).
It speaks what the notifier, smtplib and Alertmanager use: EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, VRFY, HELP and QUIT; no TLS and no AUTH (neither is announced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_REJECT_DOMAINS = "rejected.invalid,refused.example.org"
HOSTNAME = "smtp-sink.local"
DATA_SIZE_LIMIT = 10_485_760
# Longer command lines are refused (RFC 5321 allows 512 octets; SMTPUTF8 and
# parameters need some room more).
COMMAND_LINE_LIMIT = 2048
END_OF_DATA = b"\r\n.\r\n"


class FileSink:
    """Where messages go: one file each, and which recipients are refused."""

    def __init__(self, mail_dir: Path, reject_domains: set[str]) -> None:
        self.mail_dir = mail_dir
        self.reject_domains = reject_domains

    def refuses(self, address: str) -> bool:
        return address.rsplit("@", 1)[-1].lower() in self.reject_domains

    def store(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        final = f"{self.mail_dir}/{stamp}-{uuid.uuid4().hex}"
        tmp, final = final + ".tmp", final + ".eml"
        header = (f"X-Envelope-From: {mail_from}\r\n"
                  f"X-Envelope-To: {', '.join(rcpt_tos)}\r\n").encode()
        # No fsync: a development sink, on the same disk and cores as the stack it serves.
        # The rename still shows each reader a whole message or none; only a crash of the
        # machine itself may lose the last messages stored. Plain os calls: open()'s
        # buffered file adds system calls (fstat, ioctl, lseek) that cost this loop, which
        # serves every connection, about as much again as the file itself.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(header + content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, final)
        return Path(final)


def unstuff(data: bytes) -> bytes:
    """The message without SMTP's transparency dots (RFC 5321 4.5.2): a line that starts
    with a dot lost that dot. `data` ends with CRLF and holds no line that is a lone dot
    (that one ended it)."""
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n")
    return data[1:] if data.startswith(b".") else data


def _address(arg: str, keyword: str) -> str | None:
    """The address of `FROM:<a@b> PARAMS` (`keyword` "FROM"), None if malformed."""
    if arg[:len(keyword) + 1].upper() != f"{keyword}:":
        return None
    path = arg[len(keyword) + 1:].strip()
    if path.startswith("<"):
        end = path.find(">")
        return None if end < 0 else path[1:end]
    return path.split(" ", 1)[0] or None


class SinkProtocol(asyncio.Protocol):
    """One SMTP session."""

    def __init__(self, sink: FileSink, hostname: str = HOSTNAME,
                 data_size_limit: int = DATA_SIZE_LIMIT) -> None:
        self.sink = sink
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.greeted = False
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
        self.in_data = False
        self.scanned = 0  # bytes of message data already searched for its end
        self.at_start = False  # the buffer starts where the message starts
        self.too_much = False
        self.commands: dict[str, Callable[[str], str]] = {
            "EHLO": self.ehlo, "HELO": self.helo, "MAIL": self.mail, "RCPT": self.rcpt,
            "DATA": self.data, "RSET": self.rset, "NOOP": self.noop, "VRFY": self.vrfy,
            "HELP": self.help, "QUIT": self.quit,
        }
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"220 {self.hostname} ESMTP course-signup sink\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        replies: list[str] = []
        while self.buffer and not self.closing:
            reply = self._message() if self.in_data else self._command()
            if reply is None:
                break
            replies.append(reply)
        if replies and self.transport is not None:
            self.transport.write(("\r\n".join(replies) + "\r\n").encode())
            if self.closing:
                self.transport.close()

    # ------------------------------------------------------------------ parsing

    def _command(self) -> str | None:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > COMMAND_LINE_LIMIT:
                self.buffer.clear()
                return "500 Line too long"
            return None
        line = self.buffer[:end].decode("utf-8", "surrogateescape")
        del self.buffer[:end + 2]
        if end > COMMAND_LINE_LIMIT:
            return "500 Line too long"
        verb, _, arg = line.partition(" ")
        handle = self.commands.get(verb.upper())
        if handle is None:
            return f'500 Error: command "{verb.upper()}" not recognized'
        return handle(arg.strip())

    def _message(self) -> str | None:
        buffer = self.buffer
        if self.at_start and buffer.startswith(b".\r\n"):
            # The dot line right after DATA: an empty message.
            body = b""
            del buffer[:3]
        else:
            # The dot line ends the message: CRLF . CRLF, the CRLF before it the
            # message's last line end. Searched only from where the last chunk ended.
            end = buffer.find(END_OF_DATA, self.scanned)
            if end < 0:
                self.at_start = self.at_start and len(buffer) < 3
                self.scanned = max(0, len(buffer) - len(END_OF_DATA) + 1)
                if len(buffer) > self.data_size_limit:  # dropped, the end still looked for
                    self.too_much = True
                    del buffer[:self.scanned]
                    self.scanned = 0
                return None
            body = bytes(buffer[:end + 2])
            del buffer[:end + len(END_OF_DATA)]
        self.in_data, self.scanned = False, 0
        too_much, self.too_much = self.too_much or len(body) > self.data_size_limit, False
        mail_from, rcpt_tos = self.mail_from or "", self.rcpt_tos
        self.mail_from, self.rcpt_tos = None, []
        if too_much:
            return "552 Error: Too much mail data"
        self.sink.store(mail_from, rcpt_tos, unstuff(body))
        return "250 Message accepted for delivery"

    # ------------------------------------------------------------------ commands

    def ehlo(self, arg: str) -> str:
        if not arg:
            return "501 Syntax: EHLO hostname"
        self.greeted, self.mail_from, self.rcpt_tos = True, None, []
        return (f"250-{self.hostname}\r\n250-SIZE {self.data_size_limit}\r\n250-8BITMIME\r\n"
                "250-SMTPUTF8\r\n250-PIPELINING\r\n250 HELP")

    def helo(self, arg: str) -> str:
        if not arg:
            return "501 Syntax: HELO hostname"
        self.greeted, self.mail_from, self.rcpt_tos = True, None, []
        return f"250 {self.hostname}"

    def mail(self, arg: str) -> str:
        if not self.greeted:
            return "503 Error: send HELO first"
        if self.mail_from is not None:
            return "503 Error: nested MAIL command"
        address = _address(arg, "FROM")
        if address is None:
            return "501 Syntax: MAIL FROM: <address>"
        self.mail_from = address
        return "250 OK"

    def rcpt(self, arg: str) -> str:
        if self.mail_from is None:
            return "503 Error: need MAIL command"
        address = _address(arg, "TO")
        if not address:
            return "501 Syntax: RCPT TO: <address>"
        if self.sink.refuses(address):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        self.rcpt_tos.append(address)
        return "250 OK"

    def data(self, arg: str) -> str:
        if not self.rcpt_tos:
            return "503 Error: need RCPT command"
        if arg:
            return "501 Syntax: DATA"
        self.in_data, self.at_start = True, True
        return "354 End data with <CR><LF>.<CR><LF>"

    def rset(self, arg: str) -> str:
        self.mail_from, self.rcpt_tos = None, []
        return "250 OK"

    def noop(self, arg: str) -> str:
        return "250 OK"

    def vrfy(self, arg: str) -> str:
        return "252 Cannot VRFY user, but will accept message and attempt delivery"

    def help(self, arg: str) -> str:
        return "250 Supported commands: " + " ".join(self.commands)

    def quit(self, arg: str) -> str:
        self.closing = True
        return "221 Bye"


async def serve(host: str, port: int, sink: FileSink) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(sink), host=host, port=port)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"smtp sink listening on {host}:{port}, storing into {sink.mail_dir}", flush=True)
    async with server:
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SMTP_PORT", "2525")))
    parser.add_argument("--mail-dir", type=Path, required=True)
    args = parser.parse_args()
    args.mail_dir.mkdir(parents=True, exist_ok=True)
    reject = os.environ.get("SMTP_SINK_REJECT_DOMAINS", DEFAULT_REJECT_DOMAINS)
    sink = FileSink(args.mail_dir, {d.strip().lower() for d in reject.split(",") if d.strip()})
    asyncio.run(serve(args.host, args.port, sink))


if __name__ == "__main__":
    main()
