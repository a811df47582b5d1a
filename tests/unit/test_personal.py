"""Sealing personal data: round trips, and every tampering fails loudly."""

from __future__ import annotations

import pytest

from schemas.personal import SealError, new_data_key, seal, student_hash, unseal
from schemas.pseudonyms import seat_key

SECRET = b"unit-test-secret"
SIGNUP = "5e9d1c3b-7a2f-4e6d-8b0c-9a1f2e3d4c5b"


def test_a_sealed_value_opens_with_its_key_sign_up_and_field() -> None:
    key = new_data_key()
    sealed = seal(key, SIGNUP, "name", "Ada Lovelace ✓")
    assert b"Ada" not in sealed
    assert unseal(key, SIGNUP, "name", sealed) == "Ada Lovelace ✓"


def test_sealing_twice_gives_different_bytes() -> None:
    key = new_data_key()
    assert seal(key, SIGNUP, "email", "ada@example.org") != seal(
        key, SIGNUP, "email", "ada@example.org")


def test_another_key_fails() -> None:
    sealed = seal(new_data_key(), SIGNUP, "email", "ada@example.org")
    with pytest.raises(SealError):
        unseal(new_data_key(), SIGNUP, "email", sealed)


def test_another_sign_up_fails() -> None:
    key = new_data_key()
    sealed = seal(key, SIGNUP, "email", "ada@example.org")
    with pytest.raises(SealError):
        unseal(key, "0b9a1f4e-58c2-4f7d-8e0a-91d3c6b2a7f4", "email", sealed)


def test_another_field_fails() -> None:
    key = new_data_key()
    sealed = seal(key, SIGNUP, "name", "Ada Lovelace")
    with pytest.raises(SealError):
        unseal(key, SIGNUP, "email", sealed)


@pytest.mark.parametrize("position", [0, 11, 12, -1])
def test_any_changed_byte_fails(position: int) -> None:
    key = new_data_key()
    sealed = bytearray(seal(key, SIGNUP, "email", "ada@example.org"))
    sealed[position] ^= 0x01
    with pytest.raises(SealError):
        unseal(key, SIGNUP, "email", bytes(sealed))


def test_truncated_bytes_and_short_keys_fail() -> None:
    key = new_data_key()
    sealed = seal(key, SIGNUP, "email", "ada@example.org")
    with pytest.raises(SealError):
        unseal(key, SIGNUP, "email", sealed[:20])
    with pytest.raises(SealError):
        unseal(key[:16], SIGNUP, "email", sealed)


def test_student_hash_is_stable_and_ignores_letter_case() -> None:
    first = student_hash(SECRET, "Ada.Lovelace@Example.ORG")
    assert first == student_hash(SECRET, "ada.lovelace@example.org")
    assert first == student_hash(SECRET, "  ADA.LOVELACE@EXAMPLE.ORG ")
    assert len(first) == 43 and "ada" not in first.lower()


def test_student_hash_depends_on_secret_and_address_and_differs_from_seat_keys() -> None:
    ada = student_hash(SECRET, "ada@example.org")
    assert ada != student_hash(b"another-secret", "ada@example.org")
    assert ada != student_hash(SECRET, "bob@example.org")
    assert ada != seat_key(SECRET, "", "ada@example.org")


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        student_hash(b"", "ada@example.org")
