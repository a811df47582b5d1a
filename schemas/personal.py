"""Personal data sealed under each student's own key: the crypto of crypto-shredding.

Pure: no I/O; the keys come from the key store (PostgreSQL `student_keys`), which
the command API and the notifier read. A student's e-mail address and name are
sealed with AES-256-GCM under a data key of that student alone, so deleting the key
(an erasure) makes every copy in Kafka, wherever it was copied to, unreadable, while
the records themselves stay: the event log is kept forever and cannot be edited.

The associated data binds a sealed value to its sign-up and its field: a ciphertext
moved into another sign-up, or from `name_sealed` into `email_sealed`, fails to open
instead of yielding the wrong person's data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.addresses import same_student_form

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random, so at most ~2**32 seals per key (a student)


class SealError(ValueError):
    """A sealed value does not open: wrong key, another sign-up or field, or altered bytes."""


def student_hash(secret: bytes, email: str) -> str:
    """Where the key store files a student: a keyed hash of the case-folded address.

    The "student" label keeps it unrelated to the seat keys made with the same secret.
    """
    if not secret:
        raise ValueError("the pseudonym secret is empty")
    message = f"student\x00{same_student_form(email)}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# The advisory-lock class (PostgreSQL's two-int form: class, hashtext(key_id)) under
# which a data key is in use. The notifier holds it shared from reading the key until
# the e-mail is sent or has failed; an erasure takes it exclusive before it deletes the
# key, so `done` is reported only once no mail to that student can still go out.
KEY_IN_USE_LOCK = 0x6B657973  # "keys"

# Values derived from a student's own data key, each under its own label. They are
# stable while the key exists (so a retry finds its sign-up and one student holds one
# seat per course) and cannot be recomputed by anyone once the key is deleted, not
# even with every secret of the deployment: nothing derived from the address outlives
# an erasure. (The student hash above is derived from the address under
# PSEUDONYM_SECRET; it is only kept next to the key and with a pending erasure.)
SIGNUP_NAMESPACE = uuid.UUID("5d2e7c1a-9b64-4f0e-b3a8-2c7f91e4d605")


def _derived(key: bytes, label: str, *parts: str) -> bytes:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a data key has {KEY_BYTES} bytes, not {len(key)}")
    return hmac.new(key, "\x00".join((label, *parts)).encode(), hashlib.sha256).digest()


def _text(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def seat_key(key: bytes, course_id: str) -> str:
    """The key of one student's seat in one course: 43 url-safe characters.

    The course id takes part, so a student's seat keys in two courses are unrelated.
    """
    return _text(_derived(key, "seat", course_id))


def signup_id_for(key: bytes, course_id: str, idempotency_key: str) -> str:
    """The sign-up of a request with an Idempotency-Key: the same student's retry finds
    the same sign-up; another student's request with the same key is their own."""
    return str(uuid.uuid5(SIGNUP_NAMESPACE, _text(_derived(key, "signup", course_id,
                                                             idempotency_key))))


def request_fingerprint(key: bytes, name: str, date_of_birth: str) -> str:
    """What a keyed sign-up's retry must repeat (the student's address is the key
    itself): the same Idempotency-Key with another body is refused."""
    return _text(_derived(key, "request", name, date_of_birth))


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _associated_data(signup_id: str, field: str) -> bytes:
    return f"{signup_id}\x00{field}".encode()


def seal(key: bytes, signup_id: str, field: str, plaintext: str) -> bytes:
    """nonce || AES-GCM(key, nonce, plaintext, ad = signup_id NUL field)."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _associated_data(signup_id, field))
    return nonce + sealed


def unseal(key: bytes, signup_id: str, field: str, sealed: bytes) -> str:
    """The plaintext of `seal`; SealError for anything that does not authenticate."""
    if len(key) != KEY_BYTES:
        raise SealError(f"a data key has {KEY_BYTES} bytes, not {len(key)}")
    if len(sealed) < NONCE_BYTES + 16:
        raise SealError("too short for a nonce and a tag")
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        plain = AESGCM(key).decrypt(nonce, body, _associated_data(signup_id, field))
    except InvalidTag:
        raise SealError("the sealed value does not authenticate") from None
    return plain.decode()
