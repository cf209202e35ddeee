"""The caps on one guest call's export name and arguments, checked before conversion.

The gateway and the executor check a call's shape first, so that a hostile request (a
million arguments, a 10 KB export name) is refused for the price of a length, before
any value is copied, converted or echoed into an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tensorwasm_common.errors import FieldTooLargeError

# wasmtime refuses a function type with more than 1000 parameters: no export takes more.
MAX_ARGUMENTS = 1000
# All argument values of one call, serialized (a v128 is 18 bytes; 1000 of them fit).
MAX_ARGUMENT_BYTES = 64 << 10
# The UTF-8 length of an export name.
MAX_EXPORT_NAME_BYTES = 1024


class SizedValue(Protocol):
    """An argument as received (a `tensorwasm.common.v1.Value`): it knows its wire size."""

    def ByteSize(self) -> int:  # noqa: N802 (the protobuf method's name)
        """The value's serialized size in bytes."""
        ...


def check_call(export_name: str, args: Sequence[SizedValue]) -> None:
    """Refuses a call whose export name or arguments are larger than their caps.

    Raises:
        FieldTooLargeError: more than MAX_ARGUMENTS arguments, more than
            MAX_ARGUMENT_BYTES of them, or an export name over MAX_EXPORT_NAME_BYTES
            (metadata: field, limit, unit).
    """
    # A str holds at most 4 UTF-8 bytes per character: encode only a name that may be long.
    if len(export_name) * 4 > MAX_EXPORT_NAME_BYTES and (
        len(export_name.encode("utf-8", "surrogatepass")) > MAX_EXPORT_NAME_BYTES
    ):
        raise FieldTooLargeError.of("export_name", MAX_EXPORT_NAME_BYTES, "bytes")
    if len(args) > MAX_ARGUMENTS:
        raise FieldTooLargeError.of("args", MAX_ARGUMENTS, "arguments")
    if args and sum(arg.ByteSize() for arg in args) > MAX_ARGUMENT_BYTES:
        raise FieldTooLargeError.of("args", MAX_ARGUMENT_BYTES, "bytes")
