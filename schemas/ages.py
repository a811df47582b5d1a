"""Age arithmetic shared by the command API (is this birth date plausible?) and the read
side (how old are the students?): pure, standard library only."""

from __future__ import annotations

from datetime import date

# The mean length of a Gregorian year: an age in days divided by it is an age in years
# that neither gains nor loses over a 400-year leap cycle.
DAYS_PER_YEAR = 365.2425


def completed_years(dob: date, as_of: date) -> int:
    """Whole years lived; born 29 February, the birthday is 1 March in other years."""
    birthday_reached = (as_of.month, as_of.day) >= (dob.month, dob.day)
    return as_of.year - dob.year - (0 if birthday_reached else 1)


def exact_years(days_lived: float) -> float:
    """An age in days as years, rounded by round() to two decimals (half to even)."""
    return round(days_lived / DAYS_PER_YEAR, 2)
