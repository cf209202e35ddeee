"""TensorWasm dispatcher service."""
