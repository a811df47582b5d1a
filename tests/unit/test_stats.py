import random
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import reduce

import pytest

from projections.stats import AgeAggregate, AgeStats, age_stats, fold
from schemas.ages import completed_years
from schemas.messages import CourseCreated, Event, SignUpRejected, StudentSignedUp

NOW = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("as_of", "years"),
    [(date(2025, 5, 16), 24), (date(2025, 5, 17), 25), (date(2025, 5, 18), 25)],
)
def test_completed_years_around_a_birthday(as_of: date, years: int) -> None:
    assert completed_years(date(2000, 5, 17), as_of) == years


@pytest.mark.parametrize(
    ("as_of", "years"),
    [
        (date(2023, 2, 28), 22),
        (date(2023, 3, 1), 23),
        (date(2024, 2, 28), 23),
        (date(2024, 2, 29), 24),
    ],
)
def test_someone_born_on_29_february_has_a_birthday_on_1_march_in_other_years(
    as_of: date, years: int
) -> None:
    assert completed_years(date(2000, 2, 29), as_of) == years


@pytest.mark.parametrize(
    ("dob", "as_of", "years"),
    [
        (date(1999, 12, 31), date(2024, 12, 30), 24),
        (date(1999, 12, 31), date(2024, 12, 31), 25),
        (date(1999, 12, 31), date(2025, 1, 1), 25),
        (date(2000, 1, 1), date(2024, 12, 31), 24),
        (date(2000, 1, 1), date(2025, 1, 1), 25),
    ],
)
def test_completed_years_at_year_ends(dob: date, as_of: date, years: int) -> None:
    assert completed_years(dob, as_of) == years


def test_an_empty_aggregate_has_no_ages() -> None:
    assert age_stats(AgeAggregate(), date(2025, 1, 1)) == AgeStats(None, None, None)


def test_min_age_comes_from_the_youngest_and_max_age_from_the_oldest() -> None:
    agg = AgeAggregate().add(date(2000, 6, 1)).add(date(1980, 6, 1)).add(date(1990, 6, 1))

    stats = age_stats(agg, date(2025, 6, 1))

    assert (stats.min_age, stats.max_age) == (25, 45)
    assert stats.average_age == pytest.approx(35.0, abs=0.01)


def test_the_same_aggregate_answers_for_any_date() -> None:
    agg = AgeAggregate().add(date(2000, 6, 1))

    assert age_stats(agg, date(2025, 5, 31)).min_age == 24
    assert age_stats(agg, date(2030, 6, 1)).min_age == 30


def random_dates(rng: random.Random, n: int) -> list[date]:
    return [date(1940, 1, 1) + timedelta(days=rng.randint(0, 30_000)) for _ in range(n)]


def test_average_equals_the_mean_of_individual_exact_ages() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        dobs = random_dates(rng, rng.randint(1, 40))
        as_of = date(2025, 1, 1) + timedelta(days=rng.randint(0, 3_000))

        stats = age_stats(reduce(AgeAggregate.add, dobs, AgeAggregate()), as_of)

        slow = sum((as_of - dob).days / 365.2425 for dob in dobs) / len(dobs)
        assert stats.average_age is not None
        assert abs(stats.average_age - slow) <= 0.005 + 1e-9, seed
        assert stats.average_age == round(stats.average_age, 2)
        assert stats.min_age == min(completed_years(dob, as_of) for dob in dobs)
        assert stats.max_age == max(completed_years(dob, as_of) for dob in dobs)


def test_merge_is_associative_and_equals_adding_one_by_one() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        dobs = random_dates(rng, rng.randint(0, 30))
        cut_a, cut_b = sorted(rng.randint(0, len(dobs)) for _ in range(2))
        a, b, c = (
            reduce(AgeAggregate.add, part, AgeAggregate())
            for part in (dobs[:cut_a], dobs[cut_a:cut_b], dobs[cut_b:])
        )

        one_by_one = reduce(AgeAggregate.add, dobs, AgeAggregate())

        assert a.merge(b).merge(c) == a.merge(b.merge(c)) == one_by_one
        assert a.merge(AgeAggregate()) == AgeAggregate().merge(a) == a


def signed_up(course_id: str, dob: date) -> StudentSignedUp:
    return StudentSignedUp(
        event_id=str(uuid.uuid4()),
        event_type="StudentSignedUp",
        occurred_at=NOW,
        course_id=course_id,
        causation_id=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        signup_id=str(uuid.uuid4()),
        email="ann@example.org",
        name="Ann",
        date_of_birth=dob,
        seats_taken=1,
    )


def test_fold_counts_a_repeated_event_id_once_and_ignores_other_events() -> None:
    first = signed_up("intro-python", date(2000, 1, 1))
    other = signed_up("databases", date(1990, 1, 1))
    created = CourseCreated("e1", "CourseCreated", NOW, "intro-python", "c", "c", "T", "L", 2)
    rejected = SignUpRejected(
        "e2", "SignUpRejected", NOW, "intro-python", "c", "c", "s", "e", "n", "course_full"
    )
    events: list[Event] = [created, first, rejected, other, first]

    aggregates = fold(events)

    assert aggregates == {
        "intro-python": AgeAggregate().add(date(2000, 1, 1)),
        "databases": AgeAggregate().add(date(1990, 1, 1)),
    }
