"""The snapshot-store form of a registered kernel: its record key and payload."""

from __future__ import annotations

import blake3
import pytest
from tensorwasm_common.kernel_records import (
    KernelHeader,
    KernelPayloadError,
    decode_kernel_payload,
    encode_kernel_payload,
    kernel_record_key,
)

PTX = b".visible .entry k()\n{\n}\n"
HEADER = KernelHeader("k", "1.0.0", 80, "k", blake3.blake3(PTX).hexdigest())


def test_a_payload_round_trips() -> None:
    assert decode_kernel_payload(encode_kernel_payload(HEADER, PTX)) == (HEADER, PTX)


@pytest.mark.parametrize(
    "payload",
    [
        b"no header line",
        b"{not json}\n" + PTX,
        b'{"name": "k"}\n' + PTX,
        encode_kernel_payload(HEADER, PTX) + b" ",  # PTX no longer matches its digest
    ],
)
def test_a_bad_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(KernelPayloadError):
        decode_kernel_payload(payload)


def test_keys_separate_namespaces_names_and_versions() -> None:
    keys = {
        kernel_record_key(namespace, name, version)[0]
        for namespace, name, version in [
            ("", "a", "1.0.0"), ("ta", "a", "1.0.0"), ("", "a", "1.0.1"), ("", "b", "1.0.0"),
            ("", "a\x001", ".0.0"),
        ]
    }  # fmt: skip
    assert len(keys) == 5
    assert kernel_record_key("ta", "a", "1.0.0")[1] == "ta/a@1.0.0"
