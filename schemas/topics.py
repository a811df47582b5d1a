"""Topic names: the only place they are spelled."""

COMMANDS = "course-commands"
EVENTS = "course-events"
DLQ_SUFFIX = ".dlq"
COMMANDS_DLQ = COMMANDS + DLQ_SUFFIX
EVENTS_DLQ = EVENTS + DLQ_SUFFIX
NOTIFIER_DLQ = "course-notifications" + DLQ_SUFFIX


def dlq_of(topic: str) -> str:
    return topic + DLQ_SUFFIX
