"""A session's device state out of one CudaSession and into a fresh one: kernels under their
ids, buffers with their bytes, the id counters; and the block format on its own. The
transport is a stand-in device keeping buffers and kernels per session; the real path
(cpu dispatcher) is in tests/integration/test_instance_snapshots.py."""

from __future__ import annotations

import time

import pytest
from tensorwasm_common.gpu_abi import AbiError, AbiFailure
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    BatchResult,
    CommandResult,
    LoadKernel,
    ReadBuffer,
    WriteBuffer,
)
from tensorwasm_executor.errors import ImageFormatError
from tensorwasm_executor.gpu.cuda_session import CudaSession
from tensorwasm_executor.gpu.device_state import (
    DeviceState,
    decode_device_state,
    encode_device_state,
)

PTX = b".version 7.8\n.target sm_80\n.visible .entry vector_add(\n)\n{\n}\n"


class Device:
    """Kernels and buffers by (session, id); `refuse_alloc` answers allocations -6."""

    def __init__(self) -> None:
        self.kernels: dict[tuple[str, int], str] = {}
        self.buffers: dict[tuple[str, int], bytearray] = {}
        self.refuse_alloc = False

    def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
        session, results = request.session_id, []
        for command in request.commands:
            result = CommandResult(0)
            if isinstance(command, LoadKernel):
                self.kernels[session, command.kernel_id] = command.entry
            elif isinstance(command, AllocBuffer):
                if self.refuse_alloc:
                    result = CommandResult(int(AbiError.QUOTA_EXCEEDED), "over quota")
                else:
                    self.buffers[session, command.handle] = bytearray(command.size_bytes)
            elif isinstance(command, WriteBuffer):
                buffer = self.buffers[session, command.handle]
                buffer[command.offset_bytes : command.offset_bytes + len(command.data)] = (
                    command.data
                )
            elif isinstance(command, ReadBuffer):
                buffer = self.buffers[session, command.handle]
                start = command.offset_bytes
                result = CommandResult(0, data=bytes(buffer[start : start + command.length_bytes]))
            results.append(result)
        return BatchResult(tuple(results), {})


def deadline() -> float:
    return time.monotonic() + 30


def holding(device: Device) -> CudaSession:
    """A session with one kernel and two buffers, as a guest would have left it."""
    session = CudaSession(device)
    session.begin_call(deadline())
    assert session.load_kernel(None, PTX, "vector_add") == 0
    for handle, data in ((1, b"first"), (3, b"third buffer")):
        assert session.request(None, AllocBuffer(handle, len(data))).code == 0
        assert session.request(None, WriteBuffer(handle, 0, data)).code == 0
        session.device_buffers[handle] = len(data)
    session.device_handles_issued = 3
    return session


def test_state_moves_to_a_fresh_session_under_the_same_ids() -> None:
    device = Device()
    original = holding(device)
    state = original.export_device_state(deadline())
    assert state == DeviceState(
        ((0, PTX, "vector_add"),), ((1, b"first"), (3, b"third buffer")), 1, 3
    )
    fresh = CudaSession(device)
    assert not fresh.holds_device_state
    fresh.import_device_state(decode_device_state(encode_device_state(state)), deadline())
    assert fresh.holds_device_state
    assert device.kernels[fresh.session_id, 0] == "vector_add"
    assert bytes(device.buffers[fresh.session_id, 3]) == b"third buffer"
    assert fresh.device_buffers == {1: 5, 3: 12} and fresh.device_handles_issued == 3
    fresh.begin_call(deadline())
    assert fresh.load_kernel(None, PTX, "vector_add") == 1  # ids go on, none reused


def test_a_refused_buffer_fails_the_import() -> None:
    device = Device()
    state = holding(device).export_device_state(deadline())
    device.refuse_alloc = True
    with pytest.raises(AbiFailure) as caught:
        CudaSession(device).import_device_state(state, deadline())
    assert caught.value.code is AbiError.QUOTA_EXCEEDED


def test_a_malformed_block_is_refused() -> None:
    block = encode_device_state(DeviceState(((0, PTX, "k"),), ((1, b"x" * 10),), 1, 1))
    for bad in (block[:10], block[:-3], b"NOTSTATE" + block[8:]):
        with pytest.raises(ImageFormatError):
            decode_device_state(bad)
