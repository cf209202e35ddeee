"""The TensorWasm Python client and the tensorwasm CLI."""
