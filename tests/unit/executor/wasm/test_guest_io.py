"""Unit tests for tensorwasm_executor.wasm.guest_io: the output cap and what a write past it
costs (a pause that releases the GIL, so a flooding guest does not slow other tenants)."""

from __future__ import annotations

from tensorwasm_executor.wasm.guest_io import OutputCapture


def test_writes_under_the_cap_are_kept_without_a_pause() -> None:
    pauses: list[float] = []
    capture = OutputCapture(10, pause=pauses.append)
    assert capture.write(b"hello") == 5
    assert capture.write(b"world") == 5
    assert bytes(capture.data) == b"helloworld"
    assert not capture.truncated
    assert pauses == []


def test_the_write_that_crosses_the_cap_is_cut_without_a_pause() -> None:
    pauses: list[float] = []
    capture = OutputCapture(4, pause=pauses.append)
    assert capture.write(b"abcdef") == 6  # the guest always sees a full write
    assert bytes(capture.data) == b"abcd"
    assert capture.truncated
    assert pauses == []


def test_every_write_past_the_cap_pauses_and_is_dropped() -> None:
    pauses: list[float] = []
    seen: list[tuple[str, bytes]] = []
    capture = OutputCapture(2, "stdout", lambda stream, data: seen.append((stream, data)),
                            pause=pauses.append)  # fmt: skip
    capture.write(b"ab")
    for _ in range(3):
        assert capture.write(b"x" * 4096) == 4096
    assert seen == [("stdout", b"ab")]
    assert capture.truncated
    assert pauses == [OutputCapture.PAST_CAP_PAUSE_SECONDS] * 3


def test_an_empty_write_past_the_cap_does_not_pause() -> None:
    pauses: list[float] = []
    capture = OutputCapture(0, pause=pauses.append)
    assert capture.write(b"") == 0
    assert pauses == []
    assert not capture.truncated


def test_output_discarded_by_design_is_dropped_without_a_pause() -> None:
    pauses: list[float] = []
    capture = OutputCapture(0, pause=pauses.append)  # init capture: no output kept
    for _ in range(3):
        assert capture.write(b"init says hello\n") == 16
    assert bytes(capture.data) == b""
    assert pauses == []
