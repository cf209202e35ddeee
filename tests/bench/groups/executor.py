"""Groups `call_export`, `compute` and `runtime_split`: the executor's sandbox against wasmtime-py.

All three run in this process (no services): the executor's `Sandbox` and its `rawcall` path
against plain wasmtime-py on the same compiled code, and native C for pure compute.

- `call_export`: the call path. `Sandbox.invoke` (fresh store and instance per call, production
  semantics) against a fresh `wasmtime.Store` + `Instance` + `Func.__call__`, and, on one warm
  instance, our raw bit-exact call (`rawcall.ExportCall`, prepared once per export, as a live
  instance's calls run) and `Resident.call` against `Func.__call__`. Goals: raw/call_export
  <= 1/6 of wasmtime/func_call, resident/call_export <= 1.0x of it (the ratio column).
- `compute`: a serial i64 loop and recursive fib through `Sandbox.invoke`, through wasmtime-py on
  a fresh instance with epoch interruption off (`wasmtime/`) and on (`wasmtime_epoch/`: the
  sandbox's own engine and compiled module), and native C (`gcc -O2`, a persistent subprocess,
  so process start-up is never measured). Goal: sandbox within 5% of raw wasmtime.
- `runtime_split`: a 2000-function module through parse+compile, instantiate, call, AOT
  serialize, AOT deserialize (bytes and file) and AOT execute; sizes are in every `params`.

The harness takes the run's sample count (2000, or 300 with --quick) of every benchmark it
times, so the expensive spec-sized work (500M-iteration loop, fib(30), a 0.3 s compile) is a
self-timed tier (`tests.bench.selftimed`, 5-10 samples) measured during set-up, printed, and
stored under `params.self_timed`; the harness-timed tier runs the same code at sizes that fit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import wasmtime
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.sandbox import ENGINE_FLAGS, CompiledModule, Outcome, Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

from tests.bench.harness import Benchmark, RunConfig, group, summarize
from tests.bench.selftimed import Reported, Tier, as_params, run_self_timed

GUESTS = Path(__file__).resolve().parents[1] / "guests"
# An epoch deadline (in ticks) no benchmark reaches: stores on an epoch engine need one.
FAR_DEADLINE = 1 << 40
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


def load_wat(name: str) -> bytes:
    """A guest of tests/bench/guests/ as module bytes."""
    return bytes(wasmtime.wat2wasm((GUESTS / name).read_text()))


def engine_like_sandbox(*, epoch_interruption: bool) -> wasmtime.Engine:
    """An engine with the sandbox's flags, epoch interruption on or off."""
    config = wasmtime.Config()
    for flag, value in {**ENGINE_FLAGS, "epoch_interruption": epoch_interruption}.items():
        setattr(config, flag, value)
    return wasmtime.Engine(config)


def compile_in(sandbox: Sandbox, wasm: bytes) -> CompiledModule:
    """Compiles through the sandbox under the content digest, as the executor does."""
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


def succeeded(outcome: Outcome) -> tuple[WasmValue, ...]:
    """The results of a successful Outcome; raises on a failure."""
    if outcome.failure is not None or outcome.results is None:
        raise RuntimeError(f"guest failed: {outcome.failure}")
    return outcome.results


def export_func(instance: wasmtime.Instance, store: wasmtime.Store, name: str) -> wasmtime.Func:
    """A function export of an instance, by name."""
    func = instance.exports(store)[name]
    if not isinstance(func, wasmtime.Func):
        raise TypeError(f"export {name!r} is not a function")
    return func


def fresh_call(
    engine: wasmtime.Engine, module: wasmtime.Module, export: str, *args: int, epoch: bool
) -> Any:
    """Plain wasmtime-py: a fresh store and instance, `Func.__call__`, the store closed."""
    store = wasmtime.Store(engine)
    try:
        if epoch:
            store.set_epoch_deadline(FAR_DEADLINE)
        return export_func(wasmtime.Instance(store, module, []), store, export)(store, *args)
    finally:
        store.close()


def _label(count: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= scale and count % scale == 0:
            return f"{count // scale}{unit}"
    return str(count)


# --- call_export --------------------------------------------------------------------------------

FUNC_NOARGS = "wasmtime/func_call/noargs"
FUNC_TWO_I32 = "wasmtime/func_call/two_i32"
FRESH_NOARGS = "wasmtime/instantiate_and_call/noargs"
FRESH_TWO_I32 = "wasmtime/instantiate_and_call/two_i32"
CALL_GOAL = "raw/call_export p50 <= 1/6 of wasmtime/func_call p50 (ratio <= 0.167)"
RESIDENT_GOAL = "resident/call_export p50 <= wasmtime/func_call p50 (ratio <= 1.0)"


@group("call_export")
def call_export(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """The call path: Sandbox.invoke vs fresh wasmtime-py, raw vs Func.__call__ when warm."""
    wasm = load_wat("calls.wat")
    with contextlib.ExitStack() as cleanup:
        sandbox = cleanup.enter_context(Sandbox())
        compiled = compile_in(sandbox, wasm)
        engine, module, pre = compiled.engine, compiled.module, compiled.instance_pre

        # One warm store and instance, shared by the wasmtime-py and the raw warm calls.
        warm = wasmtime.Store(engine)
        cleanup.callback(warm.close)
        warm.set_epoch_deadline(FAR_DEADLINE)
        raw_instance = rawcall.instantiate(pre, warm)
        warm_instance = wasmtime.Instance._from_raw(raw_instance)
        noop, add = (export_func(warm_instance, warm, n) for n in ("noop", "add"))
        two_i32 = (WasmValue.i32(1), WasmValue.i32(2))
        i32_result = (ValueType.I32,)
        raw_noop = rawcall.ExportCall(warm, raw_instance, "noop", (), ())
        raw_add = rawcall.ExportCall(warm, raw_instance, "add", (ValueType.I32,) * 2, i32_result)

        def raw_fresh_add() -> tuple[WasmValue, ...]:
            store = wasmtime.Store(engine)
            try:
                store.set_epoch_deadline(FAR_DEADLINE)
                instance = rawcall.instantiate(pre, store)
                return rawcall.call(store, instance, "add", i32_result, two_i32)
            finally:
                store.close()

        resident, _ = sandbox.spawn(compiled)
        if resident is None:
            raise RuntimeError("calls.wat did not instantiate")
        cleanup.callback(resident.terminate)

        calls: list[tuple[str, Callable[[], object], tuple[str, ...], str]] = [
            (FUNC_NOARGS, functools.partial(noop, warm), (), "Func.__call__ on a warm instance"),
            (FUNC_TWO_I32, functools.partial(add, warm, 1, 2), (), "Func.__call__, warm"),
            (
                "raw/call_export/noargs",
                functools.partial(raw_noop, ()),
                (FUNC_NOARGS,),
                "rawcall.ExportCall (bit-exact, unchecked, prepared) on the same warm instance",
            ),
            (
                "raw/call_export/two_i32",
                functools.partial(raw_add, two_i32),
                (FUNC_TWO_I32,),
                "rawcall.ExportCall on the same warm instance",
            ),
            (
                "raw/call_once/two_i32",
                functools.partial(rawcall.call, warm, raw_instance, "add", i32_result, two_i32),
                (FUNC_TWO_I32,),
                "rawcall.call: export lookup + buffer + call (a fresh store's one call)",
            ),
            (
                FRESH_NOARGS,
                functools.partial(fresh_call, engine, module, "noop", epoch=True),
                (),
                "fresh wasmtime.Store + Instance + Func.__call__ (the floor of Sandbox.invoke)",
            ),
            (
                FRESH_TWO_I32,
                functools.partial(fresh_call, engine, module, "add", 1, 2, epoch=True),
                (),
                "fresh wasmtime.Store + Instance + Func.__call__ (the floor of Sandbox.invoke)",
            ),
            (
                "raw/instantiate_and_call/two_i32",
                raw_fresh_add,
                (FRESH_TWO_I32,),
                "fresh store + rawcall.instantiate(InstancePre) + rawcall.call, no WASI",
            ),
            (
                "resident/call_export/noargs",
                functools.partial(resident.call, "noop", ()),
                (FUNC_NOARGS,),
                "Resident.call on a live instance: turn lock, deadline, fuel, output captures",
            ),
            (
                "resident/call_export/args/two_i32",
                functools.partial(resident.call, "add", two_i32),
                (FUNC_TWO_I32,),
                "Resident.call on a live instance (what CallInstance runs)",
            ),
            (
                "sandbox/call_export/noargs",
                functools.partial(sandbox.invoke, compiled, "noop", ()),
                (FRESH_NOARGS, FUNC_NOARGS),
                "Sandbox.invoke: fresh store + WASI + limits + instance per call",
            ),
            (
                "sandbox/call_export/args/two_i32",
                functools.partial(sandbox.invoke, compiled, "add", two_i32),
                (FRESH_TWO_I32, FUNC_TWO_I32),
                "Sandbox.invoke: fresh store + WASI + limits + instance per call",
            ),
        ]
        # Every path computes the right thing before any is timed.
        checks: list[object] = [
            add(warm, 1, 2),
            calls[3][1](),
            calls[4][1](),
            fresh_call(engine, module, "add", 1, 2, epoch=True),
            raw_fresh_add(),
            succeeded(sandbox.invoke(compiled, "add", two_i32)),
            succeeded(resident.call("add", two_i32)),
        ]
        expected = [3, *[(WasmValue.i32(3),)] * 2, 3, *[(WasmValue.i32(3),)] * 3]
        if checks != expected or succeeded(sandbox.invoke(compiled, "noop", ())) != ():
            raise RuntimeError(f"a call path returned a wrong result: {checks}")
        yield [
            Benchmark(
                name,
                fn,
                anchors=anchors,
                description=text,
                params=_call_goal(name),
            )
            for name, fn, anchors, text in calls
        ]


def _call_goal(name: str) -> dict[str, str]:
    if name.startswith("raw/call_export"):
        return {"goal": CALL_GOAL}
    if name.startswith("resident/call_export"):
        return {"goal": RESIDENT_GOAL}
    return {}


# --- compute ------------------------------------------------------------------------------------


class NativeKernels:
    """guests/compute.c built with gcc -O2, running as one persistent request loop."""

    def __init__(self, executable: Path) -> None:
        self._process = subprocess.Popen(
            [str(executable)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    @classmethod
    def build(cls, source: Path, out_dir: Path) -> tuple[NativeKernels, str] | None:
        """Compiles and starts the kernels; None when no gcc is installed."""
        gcc = shutil.which("gcc")
        if gcc is None:
            return None
        executable = out_dir / source.stem
        subprocess.run([gcc, "-O2", "-o", str(executable), str(source)], check=True)
        version = subprocess.run(
            [gcc, "-dumpfullversion"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return cls(executable), f"gcc {version} -O2"

    def run(self, kernel: str, arg: int, reps: int = 1) -> tuple[int, int]:
        """Runs `kernel(arg)` `reps` times in the subprocess: (its own elapsed ns, result)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{kernel} {arg} {reps}\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the native kernels exited ({self._process.poll()})")
        elapsed, result = line.split()
        return int(elapsed), int(result)

    def reported(self, kernel: str, arg: int) -> Reported:
        """One run, as the duration the subprocess measured (clock_gettime, no pipe)."""
        return Reported(self.run(kernel, arg)[0])

    def recorded(self, kernel: str, arg: int, into: list[int]) -> None:
        """One run, timed by the caller around the pipe; its own duration goes to `into`."""
        into.append(self.run(kernel, arg)[0])

    def close(self) -> None:
        """Ends the request loop (EOF on stdin) and reaps the process."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# Harness-timed sizes (x 2000 samples must fit the budget) and spec sizes for the self-timed tier.
LOOP_SHORT = 1_000_000
FIB_SHORT = 24
LOOP_LONG, LOOP_LONG_QUICK = 500_000_000, 50_000_000
FIB_LONG = 30
LOOP_TIER = Tier(samples=5, warmup=1, blocks=5)
FIB_TIER = Tier(samples=10, warmup=1, blocks=5)
COMPUTE_GOAL = "sandbox within 5% of wasmtime (ratio <= 1.05)"


def _compute_benchmarks(
    kernel: str,
    arg: int,
    variants: dict[str, Callable[[int], object]],
    *,
    native: NativeKernels | None,
    self_timed: bool,
    kernel_ns: list[int] | None = None,
) -> list[Benchmark]:
    """native/, wasmtime/, wasmtime_epoch/, sandbox/ for one kernel and size.

    Self-timed, native is the subprocess's own time; harness-timed, it is the round trip
    through the pipe, and the subprocess's own times are appended to `kernel_ns`.
    """
    bench = "loop" if kernel == "loop" else "fib"
    size = _label(arg) if kernel == "loop" else str(arg)
    name = {v: f"{v}/{bench}/{size}" for v in ("native", *variants)}
    anchors = {
        "wasmtime": ("native",),
        "wasmtime_epoch": ("wasmtime", "native"),
        "sandbox": ("wasmtime", "wasmtime_epoch", "native"),
    }
    texts = {
        "native": "gcc -O2, persistent subprocess"
        + (
            " (its own clock_gettime time)"
            if self_timed
            else " (timed around the pipe round trip; its own time: params.kernel_ns)"
        ),
        "wasmtime": "fresh Store + Instance + Func.__call__, epoch interruption off",
        "wasmtime_epoch": "fresh Store + Instance + Func.__call__, the sandbox's engine",
        "sandbox": "Sandbox.invoke (fresh store + WASI + limits + instance)",
    }
    out = []
    if native is not None:
        runner: Callable[[], object]
        if self_timed:
            runner = functools.partial(native.reported, kernel, arg)
        else:
            runner = functools.partial(
                native.recorded, kernel, arg, [] if kernel_ns is None else kernel_ns
            )
        out.append(Benchmark(name["native"], runner, description=texts["native"]))
    for variant, fn in variants.items():
        wanted = [name[a] for a in anchors[variant] if a != "native" or native is not None]
        out.append(
            Benchmark(
                name[variant],
                functools.partial(fn, arg),
                anchors=tuple(wanted),
                description=texts[variant],
            )
        )
    return out


@group("compute")
def compute(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Loop and fib: sandbox vs wasmtime-py (epochs off and on) vs native gcc -O2."""
    wasm = load_wat("compute.wat")
    loop_long = LOOP_LONG_QUICK if config.quick else LOOP_LONG
    with contextlib.ExitStack() as cleanup:
        sandbox = cleanup.enter_context(Sandbox())
        compiled = compile_in(sandbox, wasm)
        plain_engine = engine_like_sandbox(epoch_interruption=False)
        plain_module = wasmtime.Module(plain_engine, wasm)
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        built = NativeKernels.build(GUESTS / "compute.c", temp)
        native, compiler = (None, "none: gcc not found") if built is None else built
        if native is not None:
            cleanup.callback(native.close)
        else:
            print("compute: gcc not found, native benchmarks skipped")

        def variants(kernel: str, wrap: Callable[[int], WasmValue]) -> dict[str, Any]:
            def sandboxed(arg: int) -> tuple[WasmValue, ...]:
                return succeeded(sandbox.invoke(compiled, kernel, (wrap(arg),)))

            return {
                "wasmtime": functools.partial(
                    fresh_call, plain_engine, plain_module, kernel, epoch=False
                ),
                "wasmtime_epoch": functools.partial(
                    fresh_call, compiled.engine, compiled.module, kernel, epoch=True
                ),
                "sandbox": sandboxed,
            }

        loops, fibs = variants("loop", WasmValue.i64), variants("fib", WasmValue.i32)
        for kernel, arg, paths, mask in (
            ("loop", LOOP_SHORT, loops, _U64),
            ("fib", FIB_SHORT, fibs, _U32),
            ("fib", FIB_LONG, fibs, _U32),
        ):
            got = {
                "wasmtime": paths["wasmtime"](arg) & mask,
                "wasmtime_epoch": paths["wasmtime_epoch"](arg) & mask,
                "sandbox": paths["sandbox"](arg)[0].payload & mask,
            }
            if native is not None:
                got["native"] = native.run(kernel, arg)[1]
            if len(set(got.values())) != 1:
                raise RuntimeError(f"{kernel}({arg}) differs between paths: {got}")

        common = {"native_compiler": compiler, "goal": COMPUTE_GOAL}
        long_loop = run_self_timed(
            f"compute [self-timed: loop {_label(loop_long)} iterations]",
            _compute_benchmarks("loop", loop_long, loops, native=native, self_timed=True),
            LOOP_TIER,
        )
        long_fib = run_self_timed(
            f"compute [self-timed: fib({FIB_LONG})]",
            _compute_benchmarks("fib", FIB_LONG, fibs, native=native, self_timed=True),
            FIB_TIER,
        )
        benchmarks = []
        # The native subprocess's own times of the harness-timed calls, warm-up included.
        kernel_times: dict[str, list[int]] = {}
        for kernel, arg, paths, tier, longs in (
            ("loop", LOOP_SHORT, loops, LOOP_TIER, long_loop),
            ("fib", FIB_SHORT, fibs, FIB_TIER, long_fib),
        ):
            times = kernel_times.setdefault(kernel, [])
            for bench in _compute_benchmarks(
                kernel, arg, paths, native=native, self_timed=False, kernel_ns=times
            ):
                variant = bench.name.split("/")[0]
                long = next(r for n, r in longs.items() if n.startswith(f"{variant}/"))
                params = {
                    **common,
                    "kernel": kernel,
                    "arg": arg,
                    "self_timed": [as_params(long, tier)],
                }
                benchmarks.append(
                    Benchmark(bench.name, bench.fn, bench.anchors, bench.description, params)
                )
        yield benchmarks
        # After the harness measured (and before it writes the JSON, which reads `params`
        # then): the subprocess's own times of the timed calls, without the warm-up.
        for bench in benchmarks:
            if bench.name.startswith("native/"):
                times = kernel_times[bench.name.split("/")[1]][config.warmup :]
                if times and isinstance(bench.params, dict):
                    own = summarize(times)
                    bench.params["kernel_ns"] = own.as_dict()
                    print(
                        f"compute: {bench.name} kernel only (subprocess clock_gettime):"
                        f" p50 {own.p50 / 1000:.1f} µs, p99 {own.p99 / 1000:.1f} µs"
                    )


# --- runtime_split ------------------------------------------------------------------------------

SPLIT_FUNCTIONS = 2000
COMPILE_TIER, COMPILE_TIER_QUICK = Tier(10, 1, 5), Tier(4, 1, 4)


def generate_module(functions: int) -> str:
    """WAT of `functions` small functions, each calling the previous one on odd values."""
    parts = ["(module"]
    for i in range(functions):
        recurse = (
            f"(if (i32.and (local.get $y) (i32.const 1))"
            f" (then (local.set $y (i32.add (local.get $y) (call $f{i - 1} (local.get $y))))))"
            if i
            else ""
        )
        parts.append(
            f"(func $f{i} (param $x i32) (result i32) (local $y i32)"
            f" (local.set $y (i32.add (i32.mul (local.get $x) (i32.const {2 * i + 1}))"
            f" (i32.const {i})))"
            f" (local.set $y (i32.xor (local.get $y)"
            f" (i32.shr_u (local.get $y) (i32.const {i % 13 + 1}))))"
            f" {recurse} (local.get $y))"
        )
    last = f"$f{functions - 1}"
    parts.append(f'(func (export "run") (param i32) (result i32) (call {last} (local.get 0)))')
    parts.append(")")
    return "\n".join(parts)


@group("runtime_split")
def runtime_split(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """A 2000-function module: compile, instantiate, call, AOT serialize/deserialize/execute."""
    wasm = bytes(wasmtime.wat2wasm(generate_module(SPLIT_FUNCTIONS)))
    engine = engine_like_sandbox(epoch_interruption=True)  # no ticker: the epoch stays 0
    module = wasmtime.Module(engine, wasm)
    serialized = bytes(module.serialize())
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        artifact = temp / "module.cwasm"
        artifact.write_bytes(serialized)

        def instantiate(mod: wasmtime.Module) -> tuple[wasmtime.Store, wasmtime.Instance]:
            store = wasmtime.Store(engine)
            store.set_epoch_deadline(FAR_DEADLINE)
            return store, wasmtime.Instance(store, mod, [])

        def instantiate_only() -> None:
            store, _ = instantiate(module)
            store.close()

        def run_in(mod: wasmtime.Module) -> int:
            store, instance = instantiate(mod)
            try:
                result: int = export_func(instance, store, "run")(store, 7)
                return result
            finally:
                store.close()

        def compile_and_run() -> int:
            return run_in(wasmtime.Module(engine, wasm))

        def aot_execute() -> int:
            return run_in(wasmtime.Module.deserialize(engine, serialized))

        warm, warm_instance = instantiate(module)
        cleanup.callback(warm.close)
        run = export_func(warm_instance, warm, "run")
        expected = run(warm, 7)
        from_file = wasmtime.Module.deserialize_file(engine, str(artifact))
        if {compile_and_run(), aot_execute(), run_in(from_file)} != {expected}:
            raise RuntimeError("the AOT module computes something else than the JIT one")

        sizes = {
            "functions": SPLIT_FUNCTIONS,
            "wasm_bytes": len(wasm),
            "serialized_bytes": len(serialized),
            "serialized_per_wasm_byte": round(len(serialized) / len(wasm), 2),
        }
        tier = COMPILE_TIER_QUICK if config.quick else COMPILE_TIER
        long = run_self_timed(
            f"runtime_split [self-timed: {SPLIT_FUNCTIONS}-function module]",
            [
                Benchmark(
                    "jit/compile",
                    functools.partial(wasmtime.Module, engine, wasm),
                    description="parse + validate + compile: wasmtime.Module(engine, bytes)",
                ),
                Benchmark(
                    "jit/compile_instantiate_call",
                    compile_and_run,
                    anchors=("jit/compile",),
                    description="compile + fresh store + instantiate + call run(7)",
                ),
                Benchmark(
                    "aot/execute",
                    aot_execute,
                    anchors=("jit/compile_instantiate_call",),
                    description="Module.deserialize + fresh store + instantiate + call run(7)",
                ),
            ],
            tier,
        )
        print(
            f"runtime_split sizes: {len(wasm)} wasm bytes -> {len(serialized)} serialized bytes"
            f" ({sizes['serialized_per_wasm_byte']}x), {SPLIT_FUNCTIONS} functions\n"
        )

        def carried(*names: str) -> dict[str, object]:
            return {**sizes, "self_timed": [as_params(long[n], tier) for n in names]}

        yield [
            Benchmark(
                "jit/validate",
                functools.partial(wasmtime.Module.validate, engine, wasm),
                description="parse + validate only (compile: see params.self_timed)",
                params=carried("jit/compile", "jit/compile_instantiate_call"),
            ),
            Benchmark(
                "instantiate",
                instantiate_only,
                description="fresh store + Instance of the compiled module (+ store close)",
                params=sizes,
            ),
            Benchmark(
                "call",
                functools.partial(run, warm, 7),
                description="Func.__call__ run(7) on a warm instance",
                params=sizes,
            ),
            Benchmark(
                "aot/serialize",
                module.serialize,
                description="module.serialize() to bytes",
                params=sizes,
            ),
            Benchmark(
                "aot/deserialize",
                functools.partial(wasmtime.Module.deserialize, engine, serialized),
                description="Module.deserialize from bytes",
                params=sizes,
            ),
            Benchmark(
                "aot/deserialize_file",
                functools.partial(wasmtime.Module.deserialize_file, engine, str(artifact)),
                anchors=("aot/deserialize",),
                description="Module.deserialize_file from a temp file",
                params=sizes,
            ),
            Benchmark(
                "aot/execute",
                aot_execute,
                anchors=("aot/deserialize", "instantiate"),
                description="Module.deserialize + fresh store + instantiate + call run(7)",
                params=carried("aot/execute"),
            ),
        ]
