"""TensorWasm kernel library: CUDA sources, canonical PTX and NumPy references."""
