"""Sealing personal data: round trips, and every tampering fails loudly."""

from __future__ import annotations

import pytest

from schemas.personal import (
    SealError,
    new_data_key,
    request_fingerprint,
    seal,
    seat_key,
    signup_id_for,
    student_hash,
    unseal,
)
from schemas.pseudonyms import seat_key as legacy_seat_key

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
    assert ada != legacy_seat_key(SECRET, "", "ada@example.org")


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        student_hash(b"", "ada@example.org")


def test_the_seat_key_comes_from_the_students_key_and_the_course_only() -> None:
    key = new_data_key()
    seat = seat_key(key, "intro")
    assert seat == seat_key(key, "intro") and len(seat) == 43
    assert seat != seat_key(key, "databases")
    # Another student (another key) in the same course: another seat key.
    assert seat != seat_key(new_data_key(), "intro")


def test_nothing_the_secret_and_a_guessed_address_give_matches_a_derived_value() -> None:
    # The attack of issue 18: with PSEUDONYM_SECRET and a list of likely addresses,
    # recompute the values kept in the log. Each derived value needs the deleted key.
    key = new_data_key()
    kept = {seat_key(key, "intro"), signup_id_for(key, "intro", "retry-1"),
            request_fingerprint(key, "Ada Lovelace", "2001-12-10")}
    guesses = {legacy_seat_key(SECRET, "intro", "ada@example.org"),
               student_hash(SECRET, "ada@example.org")}
    assert not kept & guesses


def test_a_signup_id_belongs_to_one_student_course_and_idempotency_key() -> None:
    ada, bob = new_data_key(), new_data_key()
    first = signup_id_for(ada, "intro", "k-1")
    assert first == signup_id_for(ada, "intro", "k-1")
    assert len({first, signup_id_for(bob, "intro", "k-1"), signup_id_for(ada, "other", "k-1"),
                signup_id_for(ada, "intro", "k-2")}) == 4


def test_a_request_fingerprint_tells_bodies_apart() -> None:
    key = new_data_key()
    ada = request_fingerprint(key, "Ada Lovelace", "2001-12-10")
    assert ada == request_fingerprint(key, "Ada Lovelace", "2001-12-10")
    assert ada != request_fingerprint(key, "Ada King", "2001-12-10")
    assert ada != request_fingerprint(key, "Ada Lovelace", "2001-12-11")
