"""The `tensorwasm.offload` custom-section reader and its checks (no services)."""

from __future__ import annotations

import json

import pytest
import wasmtime
from tensorwasm_common import errors, offload_section

WAT = '(module (func (export "mm") (param i32 i32 i32 i32 i32 i32) (result i32) i32.const 0))'
ARGS = ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]


def _section(name: str, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name.encode() + payload
    assert len(body) < 128  # one-byte LEB128 sizes in these tests
    return b"\x00" + bytes([len(body)]) + body


def _module(*sections: bytes) -> bytes:
    return bytes(wasmtime.wat2wasm(WAT)) + b"".join(sections)


def test_the_section_is_found_among_others_and_parsed_in_order() -> None:
    payload = json.dumps({"mm": {"op": "matmul", "args": ["k", *ARGS[:5]]}}).encode()
    wasm = _module(_section("other", b"x"), _section(offload_section.SECTION_NAME, payload))
    (item,) = offload_section.parse_section(wasm)
    assert (item.export_name, item.op) == ("mm", "matmul")
    assert item.order() == (1, 2, 3, 4, 5, 0)  # a_ptr is parameter 1, ..., k parameter 0
    offload_section.check_signature(item, {"mm": (["i32"] * 6, ["i32"])})
    offload_section.check_signature(item, {"mm": (["i32"] * 6, [])})


@pytest.mark.parametrize(
    ("wasm", "error"),
    [
        (_module(), errors.OffloadDeclarationMalformedError),
        (
            _module(
                _section(offload_section.SECTION_NAME, b"{}"),
            ),
            errors.OffloadDeclarationMalformedError,
        ),
        (
            _module(_section(offload_section.SECTION_NAME, b"[1]")),
            errors.OffloadDeclarationMalformedError,
        ),
        (
            _module(
                *[_section(offload_section.SECTION_NAME, b'{"mm": {"op": "matmul", "args": []}}')]
                * 2
            ),
            errors.OffloadDeclarationMalformedError,
        ),
        (
            _module(_section(offload_section.SECTION_NAME, b'{"mm": {"op": "fft", "args": []}}')),
            errors.OffloadOpUnknownError,
        ),
        (
            _module(
                _section(offload_section.SECTION_NAME, b'{"mm": {"op": "matmul", "args": ["m"]}}')
            ),
            errors.OffloadOpUnknownError,
        ),
        (_module()[:-3], errors.OffloadDeclarationMalformedError),  # a truncated section
    ],
    ids=["missing", "empty", "not-object", "twice", "unknown-op", "wrong-args", "truncated"],
)
def test_bad_sections_raise_their_typed_error(wasm: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        offload_section.parse_section(wasm)


@pytest.mark.parametrize(
    "signature",
    [(["i32"] * 5, ["i32"]), (["i32"] * 5 + ["i64"], []), (["i32"] * 6, ["f32"]), None],
)
def test_a_signature_that_does_not_fit_is_refused(
    signature: tuple[list[str], list[str]] | None,
) -> None:
    item = offload_section.declaration("mm", {"op": "matmul", "args": ARGS})
    exports = {} if signature is None else {"mm": signature}
    with pytest.raises(errors.OffloadSignatureMismatchError) as caught:
        offload_section.check_signature(item, exports)
    assert caught.value.reason == "OFFLOAD_SIGNATURE_MISMATCH"
