"""The read side's arithmetic: birth-date aggregates, and ages computed from them on demand.

Views keep birth dates, never ages, so an answer for any `as_of` date stays right
as time passes without touching stored data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from schemas.ages import completed_years, exact_years
from schemas.messages import Event, StudentSignedUp


@dataclass(frozen=True)
class AgeAggregate:
    count: int = 0
    sum_days: int = 0  # sum of date.toordinal() of the birth dates
    min_dob: date | None = None
    max_dob: date | None = None

    def add(self, dob: date) -> AgeAggregate:
        return self.merge(AgeAggregate(1, dob.toordinal(), dob, dob))

    def merge(self, other: AgeAggregate) -> AgeAggregate:
        return AgeAggregate(
            count=self.count + other.count,
            sum_days=self.sum_days + other.sum_days,
            min_dob=min(_known(self.min_dob, other.min_dob), default=None),
            max_dob=max(_known(self.max_dob, other.max_dob), default=None),
        )


def _known(*dates: date | None) -> list[date]:
    return [d for d in dates if d is not None]


@dataclass(frozen=True)
class AgeStats:
    min_age: int | None
    max_age: int | None
    average_age: float | None


def age_stats(agg: AgeAggregate, as_of: date) -> AgeStats:
    if agg.count == 0 or agg.min_dob is None or agg.max_dob is None:
        return AgeStats(None, None, None)
    return AgeStats(
        min_age=completed_years(agg.max_dob, as_of),
        max_age=completed_years(agg.min_dob, as_of),
        average_age=average_age(agg, as_of),
    )


def average_age(agg: AgeAggregate, as_of: date) -> float:
    """Mean exact age in years, rounded by round() to two decimals (half to even)."""
    days_lived = agg.count * as_of.toordinal() - agg.sum_days
    return exact_years(days_lived / agg.count)


def age_histogram(births: Iterable[tuple[date, int]], as_of: date) -> dict[int, int]:
    """How many students are of each completed age at `as_of`, from (birth date, count)
    pairs: one step per distinct birth date, never one per student. Ages are the keys,
    in ascending order, and they add up to the count (an `as_of` before a birth date
    gives that student a negative age, as `completed_years` does for min_age)."""
    counts: Counter[int] = Counter()
    for dob, n in births:
        if n:
            counts[completed_years(dob, as_of)] += n
    return {age: counts[age] for age in sorted(counts)}


def birth_dates(events: Iterable[Event]) -> dict[str, Counter[date]]:
    """Per course, accepted sign-ups per birth date; a repeated event_id counts once."""
    seen: set[str] = set()
    out: dict[str, Counter[date]] = {}
    for event in events:
        if isinstance(event, StudentSignedUp) and event.event_id not in seen:
            seen.add(event.event_id)
            out.setdefault(event.course_id, Counter())[event.date_of_birth] += 1
    return out


def fold(events: Iterable[Event]) -> dict[str, AgeAggregate]:
    """Per-course aggregates of accepted sign-ups; a repeated event_id counts once."""
    seen: set[str] = set()
    aggregates: dict[str, AgeAggregate] = {}
    for event in events:
        if isinstance(event, StudentSignedUp) and event.event_id not in seen:
            seen.add(event.event_id)
            current = aggregates.get(event.course_id, AgeAggregate())
            aggregates[event.course_id] = current.add(event.date_of_birth)
    return aggregates
