"""The module side of the cuda backend without a device: the `.global` variables a module's
charge asks the driver about, and the text of a JIT log buffer."""

from __future__ import annotations

from tensorwasm_dispatcher.backends.cuda_modules import global_names, log_text


def test_every_module_scope_global_is_named() -> None:
    ptx = b"""
.version 7.8
.target sm_80
.address_size 64
.visible .global .align 4 .b8 table[1073741824];
.global .u64 counter = 0;
.weak .global .align 8 .f32 grid[4][4];
.extern .global .align 4 .u32 outside;
.global .align 4 .b8 init[3] = {1, 2, 3};
.visible .entry k(.param .u64 p)
{
ld.global.u32 %r1, [table];
ret;
}
"""
    assert global_names(ptx) == ["table", "counter", "grid", "outside", "init"]
    assert global_names(b".visible .entry k()\n{\nret;\n}\n") == []


def test_a_log_buffer_reads_up_to_its_nul() -> None:
    log = bytearray(32)
    log[:10] = b"ptxas: bad"
    assert log_text(log) == "ptxas: bad"
    assert log_text(bytearray(8)) == ""
