"""TensorWasm benchmarks: `python -m tests.bench --out bench-results [--groups ...] [--quick]`."""
