"""Unit tests for tensorwasm_gateway.functions.service: names, export choice and the deploy path.

The snapshot store and the executor pool are small in-memory fakes; the registry is the
real SQLite one in a temporary directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm_common.call_limits import CallLimits
from tensorwasm_common.errors import (
    Code,
    ExportNotFoundError,
    InvalidNameError,
    InvalidWasmError,
    UnavailableError,
)
from tensorwasm_gateway.access.tenants import validate_tenant
from tensorwasm_gateway.calls import (
    AddressedCall,
    Call,
    CallResult,
    CompiledModule,
    FunctionConfig,
    WasiConfig,
)
from tensorwasm_gateway.errors import (
    ExportRequiredError,
    FunctionAlreadyExistsError,
    FunctionNotFoundError,
    ModuleTooLargeError,
)
from tensorwasm_gateway.functions.registry import ExportRecord, FunctionRecord, Registry
from tensorwasm_gateway.functions.service import (
    FunctionService,
    choose_export,
    function_id_from_name,
)
from tensorwasm_gateway.limits import TenantCeilings
from tensorwasm_gateway.routing.executors import invoke_request
from tensorwasm_gateway.wire import FUNCTION_CONFIGS, exports_from_wire

WASM = b"\x00asm\x01\x00\x00\x00"
WASM_DIGEST = blake3.blake3(WASM).hexdigest()
LIMIT = 64


def _signature(
    params: list[values_pb2.ValueType.ValueType], results: list[values_pb2.ValueType.ValueType]
) -> values_pb2.FunctionSignature:
    return values_pb2.FunctionSignature(params=params, results=results)


DEFAULT_EXPORTS = [
    values_pb2.ExportedFunction(
        name="add",
        signature=_signature(
            [values_pb2.VALUE_TYPE_I32, values_pb2.VALUE_TYPE_I64],
            [values_pb2.VALUE_TYPE_F32],
        ),
    ),
    values_pb2.ExportedFunction(
        name="mix",
        signature=_signature(
            [values_pb2.VALUE_TYPE_F64, values_pb2.VALUE_TYPE_V128],
            [values_pb2.VALUE_TYPE_FUNCREF, values_pb2.VALUE_TYPE_EXTERNREF],
        ),
    ),
    values_pb2.ExportedFunction(
        name="odd",
        signature=_signature([values_pb2.VALUE_TYPE_UNSPECIFIED], []),
    ),
]


class FakeStore:
    """Records what would have been stored."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, str]] = []
        self.refs: set[tuple[str, str, str]] = set()  # (tenant, digest, ref_name)

    async def put(
        self,
        data: bytes,
        *,
        expected_digest: str = "",
        ref_name: str = "",
        tenant: str | None = None,
    ) -> object:
        self.puts.append((data, expected_digest))
        if ref_name:
            self.refs.add((tenant or "default", expected_digest, ref_name))
        return object()

    async def remove_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        key = (tenant or "default", digest, ref_name)
        found = key in self.refs
        self.refs.discard(key)
        return found


class FakeExecutors:
    """Answers PrepareModule with fixed exports and Invoke with a fixed outcome."""

    def __init__(
        self,
        exports: list[values_pb2.ExportedFunction] | None = None,
        prepare_error: Exception | None = None,
    ) -> None:
        self.exports = DEFAULT_EXPORTS if exports is None else exports
        self.prepare_error = prepare_error
        self.prepared: list[str] = []
        self.invoked: list[executor_pb.InvokeRequest] = []

    async def prepare(self, digest: str, **_options: object) -> CompiledModule:
        self.prepared.append(digest)
        if self.prepare_error is not None:
            raise self.prepare_error
        return CompiledModule(exports_from_wire(self.exports))

    async def invoke(self, call: AddressedCall) -> CallResult:
        self.invoked.append(invoke_request(call))  # what the executor would receive
        outcome = invocation_pb2.InvocationOutcome(
            success=invocation_pb2.InvocationSuccess(results=[values_pb2.Value(i32=7)]),
            stdout=b"out",
        )
        return CallResult(outcome, succeeded=True)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3")
    yield reg
    reg.close()


def _service(
    registry: Registry,
    store: FakeStore | None = None,
    executors: FakeExecutors | None = None,
) -> FunctionService:
    fake_executors: Any = executors or FakeExecutors()
    return FunctionService(
        registry,
        store or FakeStore(),
        fake_executors,
        max_module_bytes=LIMIT,
        configs=FUNCTION_CONFIGS,
    )


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("functions/add", "add"),
        ("functions/a", "a"),
        ("functions/my-func-2", "my-func-2"),
        ("functions/a" + "b" * 62, "a" + "b" * 62),
    ],
)
def test_function_id_from_name(name: str, expected: str) -> None:
    assert function_id_from_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "add",
        "functions/",
        "functions",
        "function/add",
        "Functions/add",
        "functions/Add",
        "functions/1add",
        "functions/-add",
        "functions/add_1",
        "functions/add/extra",
        "functions/a" + "b" * 63,
        "functions/add.wasm",
        "tenants/x/functions/add",
    ],
)
def test_function_id_from_name_rejects(name: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        function_id_from_name(name)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_NAME"
    assert caught.value.metadata == {"name": name}


def test_function_id_from_name_truncates_metadata() -> None:
    name = "functions/" + "X" * 500
    with pytest.raises(InvalidNameError) as caught:
        function_id_from_name(name)
    assert caught.value.metadata == {"name": name[:200]}


@pytest.mark.parametrize("check", ["name", "tenant", "create"])
def test_trailing_newline_is_rejected(check: str, registry: Registry) -> None:
    with pytest.raises(InvalidNameError):
        if check == "name":
            function_id_from_name("functions/add\n")
        elif check == "tenant":
            validate_tenant("acme\n")
        else:
            asyncio.run(_service(registry).create("default", "add\n", WASM))


# --- choose_export -----------------------------------------------------------------------


def _with_exports(*names: str) -> FunctionRecord:
    exports = tuple(ExportRecord(n, (), ()) for n in names)
    return FunctionRecord("default", "fn", WASM_DIGEST, 8, exports, 1)


def test_choose_named_export() -> None:
    assert choose_export(_with_exports("a", "b", "_start"), "b") == "b"


def test_choose_missing_named_export() -> None:
    with pytest.raises(ExportNotFoundError) as caught:
        choose_export(_with_exports("a", "b"), "c")
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.reason == "EXPORT_NOT_FOUND"
    assert caught.value.metadata == {"export": "c", "available": "a,b"}


def test_choose_the_only_export() -> None:
    assert choose_export(_with_exports("run"), "") == "run"


def test_choose_start_then_main_among_several() -> None:
    assert choose_export(_with_exports("a", "_start", "b", "main"), "") == "_start"
    assert choose_export(_with_exports("a", "main", "b"), "") == "main"


@pytest.mark.parametrize("names", [("a", "b"), ()])
def test_choose_export_required(names: tuple[str, ...]) -> None:
    with pytest.raises(ExportRequiredError) as caught:
        choose_export(_with_exports(*names), "")
    assert caught.value.reason == "EXPORT_REQUIRED"
    assert caught.value.metadata == {"available": ",".join(names)}


# --- create --------------------------------------------------------------------------------


def _create_error(service: FunctionService, function_id: str, wasm: bytes) -> Exception:
    try:
        asyncio.run(service.create("default", function_id, wasm))
    except Exception as exc:
        return exc
    raise AssertionError(f"create({function_id!r}) did not fail")


@pytest.mark.parametrize(
    ("function_id", "wasm", "error_type", "reason"),
    [
        # Every check fails: the id is reported first.
        ("Bad_Id", b"\xff" * (LIMIT + 1), InvalidNameError, "INVALID_NAME"),
        ("", WASM, InvalidNameError, "INVALID_NAME"),
        # A good id: size is checked before the magic number.
        ("good", b"\xff" * (LIMIT + 1), ModuleTooLargeError, "TOO_LARGE"),
        ("good", WASM + b"\x00" * (LIMIT + 1 - len(WASM)), ModuleTooLargeError, "TOO_LARGE"),
        # Within the limit but not wasm.
        ("good", b"\x7fELF\x02\x01", InvalidWasmError, "INVALID_WASM"),
        ("good", b"", InvalidWasmError, "INVALID_WASM"),
        ("good", b"\x00as", InvalidWasmError, "INVALID_WASM"),
        # Wasm of an id that exists: reported after the byte checks.
        ("taken", WASM, FunctionAlreadyExistsError, "FUNCTION_ALREADY_EXISTS"),
    ],
)
def test_create_validation_order(
    registry: Registry,
    function_id: str,
    wasm: bytes,
    error_type: type[Exception],
    reason: str,
) -> None:
    registry.insert(FunctionRecord("default", "taken", "00" * 32, 1, (), 1))
    store, executors = FakeStore(), FakeExecutors()
    error = _create_error(_service(registry, store, executors), function_id, wasm)
    assert type(error) is error_type
    assert getattr(error, "reason", None) == reason
    # Nothing was stored or compiled for a rejected module.
    assert store.puts == []
    assert executors.prepared == []


def test_create_existing_with_bad_bytes_reports_the_bytes_first(registry: Registry) -> None:
    registry.insert(FunctionRecord("default", "taken", "00" * 32, 1, (), 1))
    error = _create_error(_service(registry), "taken", b"not wasm")
    assert type(error) is InvalidWasmError


def test_create_error_metadata(registry: Registry) -> None:
    service = _service(registry)
    too_large = _create_error(service, "good", WASM + b"\x00" * LIMIT)
    assert isinstance(too_large, ModuleTooLargeError)
    assert too_large.metadata == {"limit_bytes": str(LIMIT)}
    assert str(too_large) == f"module is {len(WASM) + LIMIT} bytes; the limit is {LIMIT}"
    bad_id = _create_error(service, "x" * 300 + "!", WASM)
    assert isinstance(bad_id, InvalidNameError)
    assert bad_id.metadata == {"function_id": "x" * 200}


def test_create_exactly_at_the_limit_is_accepted(registry: Registry) -> None:
    wasm = WASM + b"\x00" * (LIMIT - len(WASM))
    record = asyncio.run(_service(registry).create("default", "edge", wasm))
    assert record.module_size_bytes == LIMIT


def test_create_stores_compiles_and_records(registry: Registry) -> None:
    store, executors = FakeStore(), FakeExecutors()
    service = _service(registry, store, executors)
    record = asyncio.run(service.create("acme", "adder", WASM))

    assert store.puts == [(WASM, WASM_DIGEST)]
    assert executors.prepared == [WASM_DIGEST]
    assert record.tenant == "acme"
    assert record.function_id == "adder"
    assert record.module_digest == WASM_DIGEST
    assert record.module_size_bytes == len(WASM)
    assert record.exports == (
        ExportRecord("add", ("i32", "i64"), ("f32",)),
        ExportRecord("mix", ("f64", "v128"), ("funcref", "externref")),
        ExportRecord("odd", ("unknown",), ()),
    )
    assert record.create_time_ns > 0
    assert registry.get("acme", "adder") == record
    assert not registry.exists("default", "adder")


def test_same_id_in_another_tenant_is_independent(registry: Registry) -> None:
    service = _service(registry)
    asyncio.run(service.create("acme", "adder", WASM))
    record = asyncio.run(service.create("globex", "adder", WASM))
    assert record.tenant == "globex"
    with pytest.raises(FunctionAlreadyExistsError):
        asyncio.run(service.create("acme", "adder", WASM))


def test_failed_compile_records_nothing(registry: Registry) -> None:
    failure = UnavailableError("executor down")
    executors = FakeExecutors(prepare_error=failure)
    with pytest.raises(UnavailableError) as caught:
        asyncio.run(_service(registry, executors=executors).create("default", "adder", WASM))
    assert caught.value is failure
    assert executors.prepared == [WASM_DIGEST]
    assert not registry.exists("default", "adder")


def test_get_list_and_delete(registry: Registry) -> None:
    store = FakeStore()
    service = _service(registry, store)

    async def scenario() -> None:
        for function_id in ("c", "a", "b"):
            await service.create("default", function_id, WASM)
        digest = store.puts[0][1]
        assert store.refs == {("default", digest, f"functions/{f}") for f in "abc"}
        assert (await service.get("default", "a")).function_id == "a"
        page = await service.list_page("default", "a", 10)
        assert [r.function_id for r in page] == ["b", "c"]
        await service.delete("default", "b")
        assert [r.function_id for r in await service.list_page("default", "", 10)] == ["a", "c"]
        assert store.refs == {("default", digest, f"functions/{f}") for f in "ac"}
        with pytest.raises(FunctionNotFoundError):
            await service.get("default", "b")
        with pytest.raises(FunctionNotFoundError):
            await service.delete("default", "b")

    asyncio.run(scenario())


# --- invoke ------------------------------------------------------------------------------


def test_invoke_routes_with_digest_export_and_tenant(registry: Registry) -> None:
    executors = FakeExecutors(
        exports=[values_pb2.ExportedFunction(name="main", signature=_signature([], []))]
    )
    service = _service(registry, executors=executors)

    async def scenario() -> tuple[CallResult, str]:
        await service.create("acme", "adder", WASM)
        request = Call(args=[values_pb2.Value(i32=1)], stdin=b"in")  # no tenant, no digest
        return await service.invoke("acme", "adder", request)

    response, export = asyncio.run(scenario())
    assert export == "main"
    assert list(response.outcome.success.results) == [values_pb2.Value(i32=7)]
    (sent,) = executors.invoked
    assert sent.module_digest == WASM_DIGEST
    assert sent.export_name == "main"
    assert sent.tenant == "acme"
    assert list(sent.args) == [values_pb2.Value(i32=1)]
    assert sent.stdin == b"in"


def test_each_call_sends_its_own_arguments_and_limits(registry: Registry) -> None:
    executors = FakeExecutors()
    service = FunctionService(
        registry,
        FakeStore(),
        executors,  # type: ignore[arg-type]
        max_module_bytes=LIMIT,
        configs=FUNCTION_CONFIGS,
        ceilings=TenantCeilings(CallLimits(timeout_seconds=30.0)),
    )
    config = FunctionConfig(
        wasi=WasiConfig(argv=("prog", "-v"), env={"MODE": "fast"}),
        default_limits=CallLimits(max_memory_bytes=1 << 20),
    )

    async def scenario() -> None:
        await service.create("acme", "adder", WASM, config)
        await service.invoke(
            "acme",
            "adder",
            Call(
                export_name="add",
                args=[values_pb2.Value(i32=1), values_pb2.Value(i32=2)],
                stdin=b"in",
                limits=CallLimits(timeout_seconds=5.0, fuel=1000),
                input=b"tensor",
            ),
        )
        await service.invoke("acme", "adder", Call(export_name="add"))
        await service.invoke(
            "acme", "adder", Call(export_name="add", args=[values_pb2.Value(i32=3)])
        )

    asyncio.run(scenario())
    first, second, third = executors.invoked
    assert list(first.args) == [values_pb2.Value(i32=1), values_pb2.Value(i32=2)]
    assert (first.stdin, first.input) == (b"in", b"tensor")
    assert first.limits.timeout.seconds == 5
    assert first.limits.fuel == 1000
    assert first.limits.max_memory_bytes == 1 << 20  # the function's default
    # The next calls carry nothing of the first: only their own fields, the defaults and
    # the tenant's ceiling (which fills the unset timeout).
    assert list(second.args) == []
    assert (second.stdin, second.input) == (b"", b"")
    assert second.limits.timeout.seconds == 30
    assert second.limits.fuel == 0
    assert second.limits.max_memory_bytes == 1 << 20
    assert list(third.args) == [values_pb2.Value(i32=3)]
    for sent in (first, second, third):
        assert sent.tenant == "acme"
        assert sent.module_digest == WASM_DIGEST
        assert list(sent.wasi.argv) == ["prog", "-v"]
        assert dict(sent.wasi.env) == {"MODE": "fast"}


def test_a_redeployed_function_is_called_as_redeployed(registry: Registry) -> None:
    executors = FakeExecutors()
    service = _service(registry, executors=executors)
    other_wasm = WASM + b"\x00\x00"  # a custom section (no name): another digest

    async def scenario() -> None:
        await service.create("acme", "adder", WASM)
        await service.invoke("acme", "adder", Call(export_name="add"))
        await service.delete("acme", "adder")
        await service.create(
            "acme", "adder", other_wasm, FunctionConfig(wasi=WasiConfig(argv=("new",)))
        )
        await service.invoke("acme", "adder", Call(export_name="add"))

    asyncio.run(scenario())
    before, after = executors.invoked
    assert before.module_digest == WASM_DIGEST
    assert list(before.wasi.argv) == []
    assert after.module_digest == blake3.blake3(other_wasm).hexdigest()
    assert list(after.wasi.argv) == ["new"]


def test_invoke_unknown_export_is_not_sent(registry: Registry) -> None:
    executors = FakeExecutors()
    service = _service(registry, executors=executors)

    async def scenario() -> None:
        await service.create("default", "adder", WASM)
        with pytest.raises(ExportNotFoundError):
            await service.invoke("default", "adder", Call(export_name="x"))
        with pytest.raises(ExportRequiredError):
            await service.invoke("default", "adder", Call())
        with pytest.raises(FunctionNotFoundError):
            await service.invoke("other", "adder", Call(export_name="add"))

    asyncio.run(scenario())
    assert executors.invoked == []
