"""Which Kafka principal may do what: the ACLs `make up` creates (idempotently, as the
operator) for the StandardAuthorizer of stack/kafka.py.

Each service's principal gets exactly what its code does, found by reading it:

- command-api: produces commands (course-commands; idempotent producer); reads no
  record. For the consumer lag it reports (service_kit/consumer_lag.py) it may describe
  every group (list them, their members and committed offsets) and the topics they
  consume (their end offsets): metadata, never a record.
- processor (faust, exactly once, app id `course-processor`): consumes course-commands
  in its group, reads course-events (building its state from the log), writes
  course-events and the commands' dead letters in transactions whose ids start with
  its app id, and creates and uses its tables' changelogs and faust's assignor topic,
  all named `course-processor-...`; its helper groups (`-restore`, `-migrate`) too.
- projector: consumes course-events in group `projector` (positions in PostgreSQL),
  dead-letters to course-events.dlq.
- notifier: consumes course-events in group `notifier`, dead-letters to
  course-notifications.dlq.

The operator principal (tests, bench, chaos, replay, `stack topics`) and the brokers are
super users (server.properties), with no ACL needed.
"""

from __future__ import annotations

from typing import Any

from schemas import topics
from stack.config import KAFKA_SERVICE_PRINCIPALS, StackConfig

PROCESSOR_APP_ID = "course-processor"

# (resource type, name, pattern, operations) per service, in confluent-kafka's names
# (its BROKER is Kafka's CLUSTER resource, named kafka-cluster).
Grant = tuple[str, str, str, tuple[str, ...]]
PRODUCE = ("WRITE", "DESCRIBE")
CONSUME = ("READ", "DESCRIBE")

GRANTS: dict[str, list[Grant]] = {
    "command-api": [
        ("TOPIC", topics.COMMANDS, "LITERAL", PRODUCE),
        ("BROKER", "kafka-cluster", "LITERAL", ("IDEMPOTENT_WRITE",)),
        # The consumer lag of every group: DESCRIBE only (offsets, members), no READ.
        ("GROUP", "*", "LITERAL", ("DESCRIBE",)),
        ("TOPIC", topics.EVENTS, "LITERAL", ("DESCRIBE",)),
    ],
    "processor": [
        ("TOPIC", topics.COMMANDS, "LITERAL", (*CONSUME, "DESCRIBE_CONFIGS")),
        ("TOPIC", topics.EVENTS, "LITERAL", ("READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        ("TOPIC", topics.COMMANDS_DLQ, "LITERAL", (*PRODUCE, "DESCRIBE_CONFIGS")),
        ("TOPIC", PROCESSOR_APP_ID, "PREFIXED",
         ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        ("GROUP", PROCESSOR_APP_ID, "PREFIXED", CONSUME),
        ("TRANSACTIONAL_ID", PROCESSOR_APP_ID, "PREFIXED", PRODUCE),
        ("BROKER", "kafka-cluster", "LITERAL", ("IDEMPOTENT_WRITE",)),
    ],
    "projector": [
        ("TOPIC", topics.EVENTS, "LITERAL", CONSUME),
        ("TOPIC", topics.EVENTS_DLQ, "LITERAL", PRODUCE),
        ("GROUP", "projector", "PREFIXED", CONSUME),
        ("BROKER", "kafka-cluster", "LITERAL", ("IDEMPOTENT_WRITE",)),
    ],
    "notifier": [
        ("TOPIC", topics.EVENTS, "LITERAL", CONSUME),
        ("TOPIC", topics.NOTIFIER_DLQ, "LITERAL", PRODUCE),
        ("GROUP", "notifier", "PREFIXED", CONSUME),
        ("BROKER", "kafka-cluster", "LITERAL", ("IDEMPOTENT_WRITE",)),
    ],
}


def bindings() -> list[Any]:
    """Every ALLOW binding, from any host (the brokers listen on loopback only)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    found = []
    for service, grants in GRANTS.items():
        principal = f"User:{KAFKA_SERVICE_PRINCIPALS[service]}"
        for restype, name, pattern, operations in grants:
            for operation in operations:
                found.append(AclBinding(
                    ResourceType[restype], name, ResourcePatternType[pattern], principal,
                    "*", AclOperation[operation], AclPermissionType.ALLOW))
    return found


def ensure_acls(config: StackConfig, bootstrap: str | None = None, timeout: float = 30) -> int:
    """Create every binding (creating an existing one changes nothing); their number. On
    `bootstrap` (another cluster: compose's) with the login of the environment."""
    from confluent_kafka.admin import AdminClient

    from stack import kafka
    from stack.procs import StackError

    admin = AdminClient(kafka.admin_config(config, bootstrap))
    wanted = bindings()
    for binding, future in admin.create_acls(wanted, request_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            raise StackError(f"kafka: could not create the ACL {binding}: {exc}") from exc
    return len(wanted)
