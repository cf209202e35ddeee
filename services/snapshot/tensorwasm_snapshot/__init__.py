"""TensorWasm snapshot service."""
