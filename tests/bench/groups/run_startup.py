"""Group `run_startup`: `tensorwasm run` of a hello-world against wasmtime-py doing the same.

Self-timed (a process start takes about a second): `run/process/hello` starts
`tensorwasm run hello.wasm` (the console script: its imports, the sandbox's engine, compile,
WASI, the call, exit) against the anchor `wasmtime/process/hello`, one Python process that
imports wasmtime, compiles the same module, links WASI preview 1 and calls `_start`. Their
ratio is the start-up `tensorwasm run` costs over the floor of a Python host.

Harness-timed, in one process: `run/in_process/hello` (`local_run.run_local`: a sandbox
with its engine and epoch ticker, compile, the call on its own thread) against
`wasmtime/in_process/hello` (a new engine, module, store, WASI, instance, `_start`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import wasmtime
from tensorwasm_client.local_run import run_local

from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed

HELLO = Path(__file__).resolve().parents[2] / "fixtures" / "wat" / "hello.wat"
TENSORWASM = Path(sys.executable).parent / "tensorwasm"
PROCESS_TIER, PROCESS_TIER_QUICK = Tier(30, 2, 5), Tier(6, 1, 3)
EXPECTED = b"hello, world\n"

# The anchor: the least a Python host does to run a WASI command with wasmtime-py.
WASMTIME_SCRIPT = """
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.inherit_stdout()
wasi.inherit_stderr()
wasi.argv = ["hello.wasm"]
store.set_wasi(wasi)
linker.instantiate(store, module).exports(store)["_start"](store)
"""


def _process(argv: list[str]) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0 or done.stdout != EXPECTED:
        raise RuntimeError(f"{argv[0]}: exit {done.returncode}, {done.stdout!r} {done.stderr!r}")


def _wasmtime_in_process(wasm: bytes) -> None:
    engine = wasmtime.Engine()  # a run makes its engine, as run_local makes its sandbox
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["hello.wasm"]
    store.set_wasi(wasi)
    linker.instantiate(store, module).exports(store)["_start"](store)


def _run_in_process(path: Path) -> None:
    written: list[bytes] = []
    outcome = run_local(
        path, export="", json_args=[], argv=[], env=[], read_only_dir=None, guest_dir="/data",
        stdin=b"", timeout_seconds=30.0, fuel=0,
        on_output=lambda _stream, data: written.append(data),
    )  # fmt: skip
    if outcome.results is None or b"".join(written) != EXPECTED:
        raise RuntimeError(f"run_local: {outcome} {written!r}")


@group("run_startup")
def run_startup(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Writes hello.wasm, times the two processes (self-timed), yields the in-process pair."""
    with tempfile.TemporaryDirectory(prefix="tensorwasm-bench-run-") as temp:
        wasm = bytes(wasmtime.wat2wasm(HELLO.read_text()))
        path = Path(temp) / "hello.wasm"
        path.write_bytes(wasm)
        tier = PROCESS_TIER_QUICK if config.quick else PROCESS_TIER
        processes = run_self_timed(
            "run_startup [self-timed: one process per run]",
            [
                Benchmark(
                    "run/process/hello",
                    lambda: _process([str(TENSORWASM), "run", str(path)]),
                    anchors=("wasmtime/process/hello",),
                    description="tensorwasm run hello.wasm, a process start to its exit",
                ),
                Benchmark(
                    "wasmtime/process/hello",
                    lambda: _process([sys.executable, "-c", WASMTIME_SCRIPT, str(path)]),
                    description="python -c: import wasmtime, compile, WASI, _start",
                ),
            ],
            tier,
        )
        yield [
            Benchmark(
                "run/in_process/hello",
                lambda: _run_in_process(path),
                anchors=("wasmtime/in_process/hello",),
                description="local_run.run_local: sandbox, compile, call on its thread",
                params={"self_timed": [as_params(r, tier) for r in processes.values()]},
            ),
            Benchmark(
                "wasmtime/in_process/hello",
                lambda: _wasmtime_in_process(wasm),
                description="engine, module, linker, store, WASI, instance, _start",
            ),
        ]
