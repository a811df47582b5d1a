"""Both HTTP APIs against their own published OpenAPI, with requests schemathesis generates.

For every operation: no 5xx, every response matches its documented status, headers and
body schema, and a request that the schema allows is accepted (not refused with a 4xx
other than a documented 401 or 404). The schema comes from the running service's
/openapi.json, so what is tested is what a client generator would read.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.openapi import from_url

from tests.e2e.conftest import RunningStack

# Enough cases per operation to hit each declared rule, few enough that the file takes
# about a minute on a shared two-core machine.
EXAMPLES_PER_OPERATION = 25
GENERATED = settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                     suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="session")
def command_api(full_stack: RunningStack) -> Any:
    return from_url(f"{full_stack.config.command_url}/openapi.json")


@pytest.fixture(scope="session")
def query_api(full_stack: RunningStack) -> Any:
    return from_url(f"{full_stack.config.query_url}/openapi.json")


@pytest.fixture(scope="session")
def admin(full_stack: RunningStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {full_stack.config.admin_token()}"}


command_schema = schemathesis.pytest.from_fixture("command_api")
query_schema = schemathesis.pytest.from_fixture("query_api")


@command_schema.parametrize()
@GENERATED
def test_the_command_api_keeps_its_openapi(case: Case, admin: dict[str, str]) -> None:
    case.call_and_validate(headers=admin, timeout=30)


@query_schema.parametrize()
@GENERATED
def test_the_query_api_keeps_its_openapi(case: Case) -> None:
    case.call_and_validate(timeout=30)
