"""A development SMTP server that stores each message it receives as one file.

Run: python -m stack.smtp_sink --port 2525 --mail-dir .run/mail

Every accepted message becomes `<mail-dir>/<received>-<uuid>.eml`, written to a
temporary name and renamed, so a reader never sees half a message (not fsynced:
a development server, cheap per message). Recipients in
a domain listed in SMTP_SINK_REJECT_DOMAINS (default `rejected.invalid` and
`refused.example.org`, which the command API accepts) get a permanent `550` that
quotes the address, as Postfix's does, to exercise the senders' dead-letter path and
prove that no server text is kept.

It announces PIPELINING (RFC 2920), as Postfix does: aiosmtpd reads one command line
after the other from the connection's stream and answers each in turn, so a client may
send MAIL, RCPT and DATA in one write and read the three answers together.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

DEFAULT_REJECT_DOMAINS = "rejected.invalid,refused.example.org"


class FileSink:
    def __init__(self, mail_dir: Path, reject_domains: set[str]) -> None:
        self.mail_dir = mail_dir
        self.reject_domains = reject_domains

    async def handle_EHLO(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With this hook aiosmtpd leaves the greeting's name to it (MAIL needs one).
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        domain = address.rsplit("@", 1)[-1].lower()
        if domain in self.reject_domains:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.store(envelope)
        return "250 Message accepted for delivery"

    def store(self, envelope: Envelope) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        final = self.mail_dir / f"{stamp}-{uuid.uuid4().hex}.eml"
        tmp = final.with_suffix(".tmp")
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        content: Any = envelope.original_content or envelope.content or b""
        body = content if isinstance(content, bytes) else str(content).encode()
        # No fsync: a development sink, on the same disk and cores as the stack it serves.
        # The rename still shows each reader a whole message or none; only a crash of the
        # machine itself may lose the last messages stored. Plain os calls: open()'s
        # buffered file adds system calls (fstat, ioctl, lseek) that cost this loop, which
        # serves every connection, about as much again as the file itself.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(header + body)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, final)
        return final


async def serve(host: str, port: int, sink: FileSink) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="smtp-sink.local", decode_data=False,
                     enable_SMTPUTF8=True, data_size_limit=10_485_760),
        host=host, port=port,
    )
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
