"""An async invocation runs under its own limits, not under the deadline of the
StartInvocation call that started it (which has long returned)."""

from __future__ import annotations

import grpc
import pytest
import wasmtime
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient, invocation_limits

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration
SPIN = bytes(wasmtime.wat2wasm('(module (func (export "spin") (loop br 0)))'))
RPC_TIMEOUT_SECONDS = 5.0  # StartInvocation's own deadline: ample to record the job
JOB_TIMEOUT_SECONDS = 3 * RPC_TIMEOUT_SECONDS  # the guest's limit, well past the RPC's


def test_a_job_outlives_the_deadline_of_the_call_that_started_it(
    stack: RunningStack, client: GatewayClient, tenant: str
) -> None:
    client.create_function("spinner", SPIN)
    request = pb.StartInvocationRequest(
        invocation=pb.InvokeRequest(
            name="functions/spinner",
            export_name="spin",
            limits=invocation_limits(JOB_TIMEOUT_SECONDS, 0, 0),
        )
    )
    with grpc.insecure_channel(stack.gateway) as channel:
        started = pb_grpc.GatewayServiceStub(channel).StartInvocation(
            request, metadata=(("x-tensorwasm-tenant", tenant),), timeout=RPC_TIMEOUT_SECONDS
        )
    done = client.wait_invocation(started.invocation.name, 120)

    # The guest spun until its own deadline: a guest outcome, not a failed call.
    assert pb.InvocationState.Name(done.state) == "INVOCATION_STATE_FAILED", done
    assert not done.HasField("error"), done.error
    assert done.outcome.failure.reason == "DEADLINE_EXCEEDED"
    ran_seconds = (done.end_time.ToNanoseconds() - done.create_time.ToNanoseconds()) / 1e9
    # It ran past the caller's deadline (to its own, three times as far): not cut short.
    assert ran_seconds > RPC_TIMEOUT_SECONDS
