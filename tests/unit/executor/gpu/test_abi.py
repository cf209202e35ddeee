"""The wasi:cuda input checks: typed argv, pointer ranges, launch dimensions, last_error."""

from __future__ import annotations

import struct

import pytest
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, ptx_declares_entry
from tensorwasm_executor.gpu.abi import (
    DeviceBufferRecord,
    PointerRecord,
    ScalarArg,
    as_u32,
    check_dimensions,
    check_region,
    parse_argv,
    truncate_error,
)

MEMORY = 65536


def code_of(call: object, *args: object) -> AbiError:
    with pytest.raises(AbiFailure) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


# --- argv ----------------------------------------------------------------------------


def test_every_tag_round_trips_little_endian() -> None:
    argv = (
        b"\x01" + struct.pack("<i", -7)
        + b"\x02" + struct.pack("<q", -(2**40))
        + b"\x03" + struct.pack("<I", 0x7FA00000)  # a signalling NaN keeps its bits
        + b"\x04" + struct.pack("<Q", 0x7FF4000000000001)
        + b"\x05" + struct.pack("<I", 0xFFFFFFFF)
        + b"\x06" + struct.pack("<Q", 2**64 - 1)
        + b"\x07" + struct.pack("<II", 1024, 256)
    )  # fmt: skip
    assert parse_argv(argv, MEMORY) == (
        ScalarArg(ArgTag.I32, -7),
        ScalarArg(ArgTag.I64, -(2**40)),
        ScalarArg(ArgTag.F32, 0x7FA00000),
        ScalarArg(ArgTag.F64, 0x7FF4000000000001),
        ScalarArg(ArgTag.U32, 0xFFFFFFFF),
        ScalarArg(ArgTag.U64, 2**64 - 1),
        PointerRecord(1024, 256),
    )


def test_vector_add_argv_is_32_bytes() -> None:
    argv = b"".join(b"\x07" + struct.pack("<II", 1024 + 256 * i, 256) for i in range(3))
    argv += b"\x05" + struct.pack("<I", 64)
    assert len(argv) == 32
    assert len(parse_argv(argv, MEMORY)) == 4


def test_empty_argv_has_no_records() -> None:
    assert parse_argv(b"", MEMORY) == ()


@pytest.mark.parametrize("tag", [0x00, 0x09, 0x7F, 0xFF])
def test_unknown_tags_are_invalid_args(tag: int) -> None:
    argv = b"\x05\x01\x00\x00\x00" + bytes([tag]) + b"\x00" * 8
    with pytest.raises(AbiFailure) as caught:
        parse_argv(argv, MEMORY)
    assert caught.value.code is AbiError.INVALID_ARGS
    assert f"{tag:#04x}" in caught.value.message and "record 1" in caught.value.message


def test_a_device_buffer_record_without_buffers_is_invalid_args_as_in_the_original() -> None:
    argv = b"\x08" + (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
    with pytest.raises(AbiFailure) as caught:
        parse_argv(argv, MEMORY)
    assert caught.value.code is AbiError.INVALID_ARGS
    assert "buffer 1" in caught.value.message


def test_a_device_buffer_record_names_a_held_buffer_and_an_offset_inside_it() -> None:
    buffers = {3: 256}
    argv = b"\x08" + (3).to_bytes(4, "little") + (64).to_bytes(4, "little")
    assert parse_argv(argv, MEMORY, buffers) == (DeviceBufferRecord(3, 64, 192),)
    outside = b"\x08" + (3).to_bytes(4, "little") + (256).to_bytes(4, "little")
    assert code_of(parse_argv, outside, MEMORY, buffers) is AbiError.INVALID_POINTER
    other = b"\x08" + (4).to_bytes(4, "little") + (0).to_bytes(4, "little")
    assert code_of(parse_argv, other, MEMORY, buffers) is AbiError.INVALID_ARGS


@pytest.mark.parametrize("tag", list(ArgTag))
def test_every_truncated_record_is_invalid_args(tag: ArgTag) -> None:
    for kept in range(tag.value_bytes):
        argv = bytes([tag]) + b"\x00" * kept
        assert code_of(parse_argv, argv, MEMORY) is AbiError.INVALID_ARGS


def test_trailing_byte_after_records_is_invalid_args() -> None:
    assert code_of(parse_argv, b"\x05\x00\x00\x00\x00\x05", MEMORY) is AbiError.INVALID_ARGS


def test_size_cap_is_4096_bytes() -> None:
    fits = b"\x06" + b"\x00" * 8  # 9 bytes
    argv = fits * 455 + b"\x01\x00\x00\x00\x00"  # 4095 + 5 = 4100
    assert code_of(parse_argv, argv, MEMORY) is AbiError.KERNEL_ARGS_UNSUPPORTED
    assert code_of(parse_argv, b"\x00" * 4097, MEMORY) is AbiError.KERNEL_ARGS_UNSUPPORTED


def test_record_cap_is_128() -> None:
    record = b"\x05" + b"\x00" * 4
    assert len(parse_argv(record * 128, MEMORY)) == 128
    assert code_of(parse_argv, record * 129, MEMORY) is AbiError.KERNEL_ARGS_UNSUPPORTED
    # the cap counts records, so 129 of them fail before a bad 130th is looked at
    assert code_of(parse_argv, record * 129 + b"\x09", MEMORY) is AbiError.KERNEL_ARGS_UNSUPPORTED


def test_cap_wins_over_a_bad_tag_only_when_it_is_reached_first() -> None:
    assert code_of(parse_argv, b"\x09" * 4097, MEMORY) is AbiError.KERNEL_ARGS_UNSUPPORTED
    assert code_of(parse_argv, b"\x09" * 4096, MEMORY) is AbiError.INVALID_ARGS


@pytest.mark.parametrize(
    ("offset", "length", "ok"),
    [
        (0, MEMORY, True),
        (MEMORY, 0, True),  # an empty range at the very end
        (MEMORY - 4, 4, True),
        (MEMORY, 1, False),
        (MEMORY - 4, 5, False),
        (MEMORY + 1, 0, False),
        (0xFFFF_FFFF, 0xFFFF_FFFF, False),  # would wrap in 32 bits
        (0xFFFF_FFFF, 1, False),
        (1, 0xFFFF_FFFF, False),
    ],
)
def test_pointer_records_are_bounds_checked(offset: int, length: int, ok: bool) -> None:
    argv = b"\x07" + struct.pack("<II", offset, length)
    if ok:
        assert parse_argv(argv, MEMORY) == (PointerRecord(offset, length),)
    else:
        assert code_of(parse_argv, argv, MEMORY) is AbiError.INVALID_POINTER


# --- regions and dimensions ----------------------------------------------------------


def test_guest_i32s_are_read_as_u32() -> None:
    assert as_u32(-1) == 0xFFFF_FFFF
    assert as_u32(-256) == 0xFFFF_FF00
    assert check_region(1024, 256, MEMORY, "x") == (1024, 256)
    assert code_of(check_region, -256, 16, MEMORY, "x") is AbiError.INVALID_POINTER
    assert code_of(check_region, 0, -1, MEMORY, "x") is AbiError.INVALID_POINTER
    assert code_of(check_region, -1, -1, 2**32, "x") is AbiError.INVALID_POINTER


def test_region_message_names_the_range() -> None:
    with pytest.raises(AbiFailure, match=r"the PTX \[65530, 65546\) is outside .*65536"):
        check_region(65530, 16, MEMORY, "the PTX")


@pytest.mark.parametrize(
    ("grid", "block"),
    [
        ((1, 1, 1), (1, 1, 1)),
        ((2**31 - 1, 2**31 - 1, 2**31 - 1), (1024, 1, 1)),
        ((1, 1, 1), (1, 1, 1024)),
        ((1, 1, 1), (32, 32, 1)),
        ((1, 1, 1), (8, 8, 16)),
    ],
)
def test_good_dimensions(grid: tuple[int, int, int], block: tuple[int, int, int]) -> None:
    check_dimensions(grid, block)


@pytest.mark.parametrize(
    ("grid", "block"),
    [
        ((1, 1, 1), (0, 1, 1)),
        ((1, 1, 1), (1, -1, 1)),
        ((1, 1, 1), (1025, 1, 1)),
        ((1, 1, 1), (1, 1, 1025)),
        ((1, 1, 1), (32, 32, 2)),  # 2048 threads
        ((1, 1, 1), (1024, 1024, 1024)),
        ((0, 1, 1), (1, 1, 1)),
        ((1, 1, -1), (1, 1, 1)),
        ((-(2**31), 1, 1), (1, 1, 1)),
    ],
)
def test_bad_dimensions(grid: tuple[int, int, int], block: tuple[int, int, int]) -> None:
    assert code_of(check_dimensions, grid, block) is AbiError.INVALID_DIMENSIONS


# --- last_error ----------------------------------------------------------------------


def test_short_errors_are_kept_whole() -> None:
    assert truncate_error("invalid_kernel: kernel 7") == b"invalid_kernel: kernel 7"
    assert truncate_error("x" * 512) == b"x" * 512


def test_long_errors_are_cut_to_512_bytes_with_an_ellipsis() -> None:
    cut = truncate_error("y" * 600)
    assert len(cut) == 512
    assert cut.endswith("…".encode())
    assert cut.decode("utf-8") == "y" * 509 + "…"


def test_cuts_fall_on_a_character_boundary() -> None:
    for prefix in range(4):  # shift the 2-byte characters across the cut
        message = "a" * prefix + "é" * 400
        cut = truncate_error(message)
        assert len(cut) <= 512
        text = cut.decode("utf-8")  # valid UTF-8: no half character
        assert text.endswith("…")
        assert message.startswith(text[:-1])
        assert len(cut) >= 512 - 4  # nothing more than the partial character was dropped


# --- PTX -----------------------------------------------------------------------------


def test_ptx_entry_detection() -> None:
    ptx = b".visible .entry vector_add(\n\t.param .u64 a\n)"
    assert ptx_declares_entry(ptx, "vector_add")
    assert ptx_declares_entry(b".entry  vector_add  (", "vector_add")
    assert not ptx_declares_entry(ptx, "vector")
    assert not ptx_declares_entry(ptx, "vector_add2")
    assert not ptx_declares_entry(b"// .entry vector_add is missing", "vector_add")
    assert not ptx_declares_entry(b".entry a.b(", "a*b")  # the name is matched literally
