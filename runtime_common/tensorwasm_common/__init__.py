"""Shared runtime of the TensorWasm services: settings, logging, tracing, metrics, bootstrap."""
