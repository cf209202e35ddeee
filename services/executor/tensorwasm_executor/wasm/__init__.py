"""The wasm core: the engine, the sandbox that runs each call in a fresh store, live stores,
values and outcomes. Knows nothing of gRPC, images or the GPU."""

from tensorwasm_executor.wasm.engine import CompiledModule, ExportInfo
from tensorwasm_executor.wasm.guest_io import NO_WASI_OPTIONS, OutputSink, WasiOptions
from tensorwasm_executor.wasm.host_modules import HostModule, HostState, current_host_state
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.outcomes import Failure, Outcome
from tensorwasm_executor.wasm.resident import Resident
from tensorwasm_executor.wasm.sandbox import Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

__all__ = [
    "NO_WASI_OPTIONS", "CompiledModule", "ExportInfo", "Failure", "HostModule", "HostState",
    "InstanceImage", "Outcome", "OutputSink", "Resident",
    "Sandbox", "ValueType", "WasiOptions", "WasmValue",
    "current_host_state",
]  # fmt: skip
