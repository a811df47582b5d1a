"""The one rule by which two e-mail addresses are the same student.

Addresses compare case-insensitively (the contract), and in Unicode that is caseless
matching: `str.casefold`, which also folds `ß` into `ss` and final sigma into sigma,
where `str.lower` does not. Every place that asks "is this the same student" (the key
store's student hash, the seat key, the audit) goes through `same_student_form`; the
address a mail is sent to keeps the spelling the student gave.
"""

from __future__ import annotations


def same_student_form(address: str) -> str:
    """The form in which two addresses are equal exactly when they are one student."""
    return address.strip().casefold()
