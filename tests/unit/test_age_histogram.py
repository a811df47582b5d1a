"""The age distribution: counts per birth date folded at `as_of`, against a direct count."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest

from projections.batch import EventRecord, birth_counts, build
from projections.stats import AgeAggregate, age_histogram, age_stats, birth_dates
from schemas import codec
from schemas.ages import completed_years
from schemas.messages import Event, SignUpRejected, StudentSignedUp

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def direct_count(dobs: list[date], as_of: date) -> dict[int, int]:
    """One student at a time, the slow and obvious way."""
    return dict(Counter(completed_years(d, as_of) for d in dobs))


def counted(dobs: list[date]) -> list[tuple[date, int]]:
    return list(Counter(dobs).items())


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (date(2023, 2, 28), {22: 1}),  # not a leap year: no birthday yet on 28 February
        (date(2023, 3, 1), {23: 1}),  # ... it comes on 1 March
        (date(2024, 2, 28), {23: 1}),
        (date(2024, 2, 29), {24: 1}),  # a leap year: on the day itself
    ],
)
def test_born_on_29_february(as_of: date, expected: dict[int, int]) -> None:
    assert age_histogram([(date(2000, 2, 29), 1)], as_of) == expected


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (date(2024, 12, 30), {24: 3}),
        (date(2024, 12, 31), {24: 1, 25: 2}),  # the two born on 31 December are 25 now
        (date(2025, 1, 1), {25: 3}),
    ],
)
def test_born_on_new_years_eve_and_day(as_of: date, expected: dict[int, int]) -> None:
    births = [(date(1999, 12, 31), 2), (date(2000, 1, 1), 1)]
    assert age_histogram(births, as_of) == expected


@pytest.mark.parametrize("seed", range(20))
def test_the_fold_equals_a_direct_count_at_many_dates(seed: int) -> None:
    rng = random.Random(seed)
    dobs = [date(1950, 1, 1) + timedelta(days=rng.randint(0, 20_000))
            for _ in range(rng.randint(1, 400))]
    dobs += [date(1996, 2, 29), date(2000, 2, 29), date(1999, 12, 31), date(2001, 1, 1)]
    births = counted(dobs)
    aggregate = AgeAggregate()
    for d in dobs:
        aggregate = aggregate.add(d)
    for as_of in (date(2023, 2, 28), date(2023, 3, 1), date(2024, 2, 28), date(2024, 2, 29),
                  date(2024, 12, 31), date(2025, 1, 1), date(2026, 6, 15),
                  date(2030, 1, 1) + timedelta(days=rng.randint(0, 3650))):
        histogram = age_histogram(births, as_of)
        assert histogram == direct_count(dobs, as_of), as_of
        assert list(histogram) == sorted(histogram)
        assert sum(histogram.values()) == len(dobs)
        stats = age_stats(aggregate, as_of)
        assert (min(histogram), max(histogram)) == (stats.min_age, stats.max_age)


def test_nobody_enrolled_is_an_empty_histogram() -> None:
    assert age_histogram([], date(2025, 1, 1)) == {}


def signed_up(course_id: str, dob: date) -> StudentSignedUp:
    return StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", NOW, course_id, "c", "c",
                           str(uuid.uuid4()), "a@example.org", "A", dob, 1, 30)


def test_batches_count_birth_dates_as_the_fold_of_the_whole_log_does() -> None:
    rng = random.Random(11)
    events: list[Event] = []
    for _ in range(300):
        course = rng.choice(["a", "b", "c"])
        if rng.random() < 0.8:
            events.append(signed_up(course, date(1990, 1, 1) + timedelta(days=rng.randint(0, 40))))
        else:
            events.append(SignUpRejected(str(uuid.uuid4()), "SignUpRejected", NOW, course, "c",
                                         "c", str(uuid.uuid4()), "b@example.org", "B",
                                         "course_full"))
    events += events[:30]  # repeated in the log: counted once
    batch = build([EventRecord(0, i, e.course_id.encode(), codec.encode(e))
                   for i, e in enumerate(events)])

    assert birth_counts(batch.decisions) == birth_dates(events)
    assert sum(sum(c.values()) for c in birth_dates(events).values()) == sum(
        isinstance(e, StudentSignedUp) for e in events[:300])
