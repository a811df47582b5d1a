import random
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from functools import reduce

from course_processor.deciding.domain import (
    Course,
    decide_create,
    decide_signup,
    evolve,
    validate,
)
from schemas.messages import (
    CourseCreated,
    CourseCreationRejected,
    CreateCourse,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
    event_id_for,
)
from schemas.messages import (
    SignupDecision as Decision,
)
from schemas.pseudonyms import seat_key

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def create(
    course_id: str = "intro-python",
    capacity: int = 2,
    title: str = "Intro to Python",
    lecturer: str = "Ada Lovelace",
) -> CreateCourse:
    return CreateCourse(
        command_id=str(uuid.uuid4()),
        course_id=course_id,
        title=title,
        lecturer=lecturer,
        capacity=capacity,
        issued_at=NOW,
        correlation_id=str(uuid.uuid4()),
    )


def signup(email: str = "ann@example.org", course_id: str = "intro-python") -> SignUp:
    return SignUp(
        command_id=str(uuid.uuid4()),
        signup_id=str(uuid.uuid4()),
        course_id=course_id,
        email=email,
        name="Ann",
        date_of_birth=date(2000, 5, 17),
        issued_at=NOW,
        correlation_id=str(uuid.uuid4()),
    )


class Processor:
    """The agent's three tables, driven the way the agent drives them."""

    def __init__(self) -> None:
        self.courses: dict[str, Course] = {}
        self.seats: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}

    def create(self, cmd: CreateCourse) -> CourseCreated | CourseCreationRejected | None:
        event = decide_create(self.courses.get(cmd.course_id), cmd, NOW)
        if event is not None:
            self._store(cmd.course_id, evolve(self.courses.get(cmd.course_id), event))
        return event

    def sign_up(self, cmd: SignUp) -> Decision | None:
        if cmd.signup_id in self.decisions:
            return None  # decided before: the decider's memory answers, nothing written
        key = seat_key(b"test-secret", cmd.course_id, cmd.email)
        course = self.courses.get(cmd.course_id)
        event = decide_signup(course, self.seats.get(key), cmd, NOW)
        if event is None:
            return None
        self._store(cmd.course_id, evolve(course, event))
        if isinstance(event, StudentSignedUp):
            self.seats[key] = cmd.signup_id
        self.decisions[cmd.signup_id] = event
        return event

    def _store(self, course_id: str, course: Course | None) -> None:
        if course is not None:
            self.courses[course_id] = course


def processor_with_course(capacity: int = 2) -> Processor:
    processor = Processor()
    processor.create(create(capacity=capacity))
    return processor


def reason(event: Decision | None) -> str | None:
    return event.reason if isinstance(event, SignUpRejected) else None


def test_a_full_course_rejects_the_next_student() -> None:
    processor = processor_with_course(capacity=2)
    first = processor.sign_up(signup("a@example.org"))
    second = processor.sign_up(signup("b@example.org"))

    third = processor.sign_up(signup("c@example.org"))

    assert isinstance(first, StudentSignedUp) and first.seats_taken == 1
    assert isinstance(second, StudentSignedUp) and second.seats_taken == 2
    assert second.capacity == 2
    assert reason(third) == "course_full"
    assert processor.courses["intro-python"].seats_taken == 2


def test_the_same_email_in_other_letter_case_is_already_enrolled() -> None:
    processor = processor_with_course()
    processor.sign_up(signup("Ann.Lee@Example.org"))

    again = processor.sign_up(signup("  ann.lee@EXAMPLE.ORG "))

    assert reason(again) == "already_enrolled"
    assert processor.courses["intro-python"].seats_taken == 1


def test_one_email_may_hold_seats_in_different_courses() -> None:
    processor = processor_with_course()
    processor.create(create(course_id="databases"))
    processor.sign_up(signup("ann@example.org"))

    other = processor.sign_up(signup("ann@example.org", course_id="databases"))

    assert isinstance(other, StudentSignedUp)


def test_a_repeated_signup_id_decides_nothing_and_takes_no_second_seat() -> None:
    processor = processor_with_course(capacity=1)
    cmd = signup()
    first = processor.sign_up(cmd)

    again = processor.sign_up(cmd)
    retried = processor.sign_up(replace(cmd, command_id=str(uuid.uuid4())))

    assert isinstance(first, StudentSignedUp)
    assert again is None and retried is None
    assert processor.courses["intro-python"].seats_taken == 1


def test_a_repeated_rejection_never_turns_into_an_acceptance() -> None:
    processor = Processor()
    cmd = signup()
    first = processor.sign_up(cmd)

    processor.create(create())
    again = processor.sign_up(cmd)

    assert first is not None and reason(first) == "course_not_found"
    assert again is None and processor.courses["intro-python"].seats_taken == 0


def test_the_sign_up_holding_the_seat_is_a_repeat_even_when_its_decision_is_forgotten() -> None:
    course = Course("intro-python", "Intro", "Ada", capacity=2, seats_taken=2)
    cmd = signup()

    assert decide_signup(course, cmd.signup_id, cmd, NOW) is None


def test_a_signup_for_an_unknown_course_is_rejected() -> None:
    cmd = signup(course_id="no-such-course")

    event = decide_signup(None, None, cmd, NOW)

    assert event == SignUpRejected(
        event_id=event_id_for(cmd.command_id),
        event_type="SignUpRejected",
        occurred_at=NOW,
        course_id="no-such-course",
        causation_id=cmd.command_id,
        correlation_id=cmd.correlation_id,
        signup_id=cmd.signup_id,
        email=cmd.email,
        name=cmd.name,
        reason="course_not_found",
    )


def test_an_acceptance_carries_the_command_metadata() -> None:
    course = Course("intro-python", "Intro", "Ada", capacity=3, seats_taken=1)
    cmd = signup()

    event = decide_signup(course, None, cmd, NOW)

    assert isinstance(event, StudentSignedUp)
    assert (event.event_id, event.event_type) == (event_id_for(cmd.command_id), "StudentSignedUp")
    assert (event.causation_id, event.correlation_id) == (cmd.command_id, cmd.correlation_id)
    assert (event.occurred_at, event.date_of_birth) == (NOW, cmd.date_of_birth)
    assert (event.seats_taken, event.capacity) == (2, 3)


def test_creating_a_new_course() -> None:
    cmd = create(capacity=30)

    event = decide_create(None, cmd, NOW)

    assert isinstance(event, CourseCreated)
    assert (event.event_id, event.causation_id) == (event_id_for(cmd.command_id), cmd.command_id)
    assert evolve(None, event) == Course("intro-python", "Intro to Python", "Ada Lovelace", 30)


def test_an_identical_repeated_create_decides_nothing() -> None:
    cmd = create()
    first = decide_create(None, cmd, NOW)
    assert first is not None
    course = evolve(None, first)

    assert decide_create(course, cmd, NOW) is None
    assert decide_create(course, replace(cmd, command_id=str(uuid.uuid4())), NOW) is None


def test_a_create_with_other_details_is_rejected() -> None:
    created = decide_create(None, create(capacity=2), NOW)
    assert created is not None
    course = evolve(None, created)
    conflicting = create(capacity=3)

    event = decide_create(course, conflicting, NOW)

    assert isinstance(event, CourseCreationRejected)
    assert event.reason == "course_exists"
    assert event.event_id == event_id_for(conflicting.command_id)
    assert evolve(course, event) == course


def test_creating_a_course_keeps_the_seats_already_taken() -> None:
    processor = processor_with_course()
    processor.sign_up(signup())

    processor.create(create())

    assert processor.courses["intro-python"].seats_taken == 1


def test_valid_commands_have_no_problems() -> None:
    assert validate(create()) == []
    assert validate(create(course_id=str(uuid.uuid4()))) == []
    assert validate(signup()) == []


def test_structurally_invalid_creates_name_each_problem() -> None:
    cmd = create(course_id="Intro_Python", title=" ", lecturer="", capacity=0)

    problems = validate(cmd)

    fields = sorted(problem.split(":")[0] for problem in problems)
    assert fields == ["capacity", "course_id", "lecturer", "title"]
    assert validate(create(course_id="x" * 65)) != []
    assert validate(create(course_id=str(uuid.uuid4()).upper())) != []


def test_an_invalid_signup_names_each_problem() -> None:
    cmd = replace(signup(), email="", name="  ")

    assert sorted(p.split(":")[0] for p in validate(cmd)) == ["email", "name"]


def test_a_signup_for_a_malformed_course_id_still_gets_a_decision() -> None:
    assert validate(signup(course_id="Not A Course")) == []


def test_any_sequence_of_signups_respects_capacity() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        capacity = rng.randint(1, 8)
        processor = processor_with_course(capacity=capacity)
        emails = [f"s{rng.randint(0, 12)}@example.org" for _ in range(rng.randint(0, 25))]
        commands = [signup(rng.choice([e, e.upper()])) for e in emails]
        commands += rng.sample(commands, k=len(commands) // 3)  # redeliveries

        events = [e for e in (processor.sign_up(cmd) for cmd in commands) if e is not None]

        accepted = {e.signup_id for e in events if isinstance(e, StudentSignedUp)}
        seats = [e.seats_taken for e in events if isinstance(e, StudentSignedUp)]
        assert len(accepted) == min(capacity, len(set(emails))), seed
        assert max(seats, default=0) <= capacity
        assert processor.courses["intro-python"].seats_taken == len(accepted)


def test_a_fold_over_the_events_rebuilds_the_course() -> None:
    processor = processor_with_course(capacity=3)
    events = [processor.sign_up(signup(f"s{i}@example.org")) for i in range(5)]
    created = decide_create(None, create(capacity=3), NOW)
    assert created is not None and None not in events

    course = reduce(evolve, events, evolve(None, created))  # type: ignore[arg-type]

    assert course == processor.courses["intro-python"]


def test_folding_a_redelivered_older_decision_keeps_the_seat_count() -> None:
    processor = processor_with_course(capacity=3)
    first = processor.sign_up(signup("a@example.org"))
    processor.sign_up(signup("b@example.org"))

    assert first is not None
    course = evolve(processor.courses["intro-python"], first)

    assert course is not None and course.seats_taken == 2
