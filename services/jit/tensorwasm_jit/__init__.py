"""TensorWasm jit service."""
