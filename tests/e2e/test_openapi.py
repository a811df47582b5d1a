"""Both HTTP APIs against their own published OpenAPI, with requests schemathesis generates.

For every operation: no 5xx, every response matches its documented status codes, headers
and body schema, and a request the schema allows is accepted (a 4xx only where documented
as the answer to a valid request: 401, 404). The schema is read from the running
service's /openapi.json: what is tested is what a client generator would read.

schemathesis's pytest plugin (`from_fixture`) does not run under pytest 9, so each test
walks the operations itself with schemathesis's Python API and hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.core.result import Err, Ok
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.e2e.conftest import RunningStack

# Enough cases per operation to reach each declared rule, few enough that the file takes
# about a minute on a shared two-core machine.
GENERATED = settings(max_examples=25, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))


def test_the_command_api_keeps_its_openapi(full_stack: RunningStack) -> None:
    admin = {"Authorization": f"Bearer {full_stack.config.admin_token()}"}
    assert_keeps_its_openapi(f"{full_stack.config.command_url}/openapi.json", admin)


def test_the_query_api_keeps_its_openapi(full_stack: RunningStack) -> None:
    admin = {"Authorization": f"Bearer {full_stack.config.admin_token()}"}
    assert_keeps_its_openapi(f"{full_stack.config.query_url}/openapi.json", admin)


def assert_keeps_its_openapi(url: str, headers: dict[str, str]) -> None:
    operations = list(from_url(url).get_all_operations())
    unreadable = [found.err() for found in operations if isinstance(found, Err)]
    assert not unreadable, f"operations schemathesis cannot read: {unreadable}"
    for found in operations:
        assert isinstance(found, Ok)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Schema-invalid requests too, for "no 5xx" and "only documented status codes";
            # whether each is refused is not checked: the declared patterns for e-mail
            # addresses and birth dates are deliberately narrower than what is accepted.
            excluded = [] if mode is GenerationMode.POSITIVE else [negative_data_rejection]
            try:
                _run(found.ok().as_strategy(generation_mode=mode), headers, excluded)
            except Unsatisfiable:
                # Nothing in the operation can be made schema-invalid (no parameters, or
                # a path parameter that takes any string).
                assert mode is GenerationMode.NEGATIVE, found.ok().label


def _run(cases: SearchStrategy[Case], headers: dict[str, str],
         excluded: Sequence[CheckFunction]) -> None:
    @GENERATED
    @given(case=cases)
    def call(case: Case) -> None:
        case.call_and_validate(headers=headers, excluded_checks=list(excluded), timeout=30)

    call()
