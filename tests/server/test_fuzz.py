"""Fuzz every operation of the OpenAPI schema with schemathesis (loopback only, with the
token, a bounded number of cases): whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from zs_core.protocol import Request  # noqa: E402
from zs_server_helpers import submit, wait_for  # noqa: E402

EXAMPLES_PER_OPERATION = 30


def operations(base_url: str):
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json", timeout=10)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 9, [op.label for op in found]
    return found


@pytest.mark.slow
def test_openapi_fuzz_never_5xx(server, small_npz):
    # One finished job, so that fuzzed requests can also hit the routes of a real job.
    with httpx.Client(base_url=server.base_url, headers=server.auth, timeout=60) as client:
        job_id = submit(client, small_npz, Request(prompt="fuzz target", steps=1, texture_size=64))
        wait_for(client, job_id)
    assert server.base_url.startswith("http://127.0.0.1:")
    failures, calls, seen = [], {"n": 0}, {}

    for operation in operations(server.base_url):
        strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
        try:
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
        except Exception:  # nothing to violate in some operations' schemas
            pass
        real_job = st.just(job_id)

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=st.one_of(*strategies), use_real_job=st.booleans(), real=real_job)
        def fuzz(case, use_real_job, real):
            if use_real_job and case.path_parameters and "job_id" in case.path_parameters:
                case.path_parameters["job_id"] = real
            response = case.call(base_url=server.base_url, headers=server.auth, timeout=30)
            calls["n"] += 1
            seen.setdefault(f"{case.method} {operation.path}", {}).setdefault(response.status_code, 0)
            seen[f"{case.method} {operation.path}"][response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        fuzz()
    print("\nstatus codes per operation:", seen)
    assert calls["n"] >= 9 * 10
    assert not failures, "\n".join(failures[:10])
    assert httpx.get(server.base_url + "/v1/health").status_code == 200
