"""Keyed hashes that stand for a student where the e-mail address must not be kept.

HMAC-SHA-256 under a secret from the environment: without the secret nobody can test
a guessed address against a stored value, which a plain hash of an address (a small,
guessable space) would allow. Addresses compare case-insensitively everywhere, so
they are case-folded first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from schemas.addresses import same_student_form


def seat_key(secret: bytes, course_id: str, email: str) -> str:
    """The key of one student's seat in one course: 43 url-safe characters.

    The course id takes part in the hash, so the keys of one student in two courses
    are unrelated: the seat table cannot link a student's courses to each other.
    """
    if not secret:
        raise ValueError("the pseudonym secret is empty")
    message = f"seat\x00{course_id}\x00{same_student_form(email)}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
