"""TensorWasm gateway service."""
