"""The seat key: a keyed hash, stable, case-insensitive, and unlinkable across courses."""

from __future__ import annotations

import pytest

from schemas.pseudonyms import seat_key


def test_the_seat_key_is_stable_and_ignores_case_and_spaces() -> None:
    key = seat_key(b"k", "intro", "Ann@Example.ORG")
    assert key == seat_key(b"k", "intro", " ann@example.org ")
    assert len(key) == 43 and key.isascii() and "@" not in key


def test_the_seat_key_depends_on_the_course_the_address_and_the_secret() -> None:
    key = seat_key(b"k", "intro", "ann@example.org")
    assert key != seat_key(b"k", "databases", "ann@example.org")
    assert key != seat_key(b"k", "intro", "bob@example.org")
    assert key != seat_key(b"other", "intro", "ann@example.org")


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        seat_key(b"", "intro", "ann@example.org")
