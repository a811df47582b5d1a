"""Withdrawal tokens: proof that a caller got a sign-up's 202 or one of its e-mails.

HMAC-SHA-256 of the course id and the sign-up id under WITHDRAWAL_SECRET, which only the
command API (to check) and the notifier (to put it in every e-mail) hold. Unforgeable
without the secret, checked without any store, and never written to Kafka: whoever
reads the event log learns sign-up ids, and a token there would let them withdraw
anybody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def withdrawal_token(secret: bytes, course_id: str, signup_id: str) -> str:
    """43 url-safe characters that let their holder withdraw this sign-up."""
    if not secret:
        raise ValueError("the withdrawal secret is empty")
    message = f"withdrawal\x00{course_id}\x00{signup_id}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_withdrawal_token(secret: bytes, course_id: str, signup_id: str, token: str) -> bool:
    """True when `token` is this sign-up's token; compared in constant time."""
    expected = withdrawal_token(secret, course_id, signup_id).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))
