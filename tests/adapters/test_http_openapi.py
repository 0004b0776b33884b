"""Property-based run of every operation of ``/openapi.json`` (schemathesis): whatever a
client sends, the agent answers with a documented contract body, never a 500."""

# The fixtures come from test_http_support: see test_http.py.
# ruff: noqa: F811

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.test_http_support import Server, serve, server  # noqa: F401 (fixtures)

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES_PER_OPERATION = 12  # x 2 modes x 17 operations: 5 to 30 s on two cores


@pytest.fixture
def gradual_underflow() -> Iterator[None]:
    """Hypothesis draws subnormal floats, which the engine's CPU set-up flushes to zero on
    the thread that loaded the backbone (this one). Only this thread's setting changes."""
    import torch

    flushing = sys.float_info.min / 2 == 0.0  # a subnormal result flushed to zero
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis's caches go to this test's temp dir, not a .hypothesis/ in the repo."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


@pytest.mark.reliability("bad_input", "schemathesis over every HTTP operation")
def test_no_generated_request_gets_a_server_error(
    server: Server, gradual_underflow, hypothesis_home, record_property
) -> None:
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis import checks as sc

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    session = requests.Session()
    checks = [sc.not_a_server_error, sc.response_schema_conformance, sc.negative_data_rejection]
    operations = [result.ok() for result in schema.get_all_operations()]
    calls = [0]
    assert len(operations) >= 17
    # An endless event stream never completes a response to check (test_http_events.py
    # covers GET /events).
    operations = [op for op in operations if not _streams(op)]

    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION * 2,
            deadline=None,
            database=None,
            derandomize=True,  # the same inputs on every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases)
        def call(case: schemathesis.Case) -> None:
            calls[0] += 1
            response = case.call(base_url=server.url, session=session, timeout=60)
            case.validate_response(response, checks=checks)

        call()
    record_property("tried", calls[0])
    record_property("failures", 0)  # a failing case raised above
    record_property("detail", f"{len(operations)} operations, no 500, every body documented")


def _streams(operation: Any) -> bool:
    responses = operation.definition.raw.get("responses", {})
    return "text/event-stream" in responses.get("200", {}).get("content", {})
