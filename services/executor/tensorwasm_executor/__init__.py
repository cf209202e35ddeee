"""TensorWasm executor service."""
