// A byte histogram: shared-memory atomics per block, then global atomics; and a stream
// compaction whose slots come from the values atomicAdd returns.
extern "C" __global__ void histogram(const unsigned char* data, unsigned* bins, int n) {
    __shared__ unsigned local[256];
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        local[b] = 0;
    }
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        atomicAdd(&local[data[i]], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        if (local[b]) {
            atomicAdd(&bins[b], local[b]);
        }
    }
}

extern "C" __global__ void compact_positive(const int* in, int* out, unsigned* count, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && in[i] > 0) {
        unsigned slot = atomicAdd(count, 1u);
        out[slot] = in[i];
    }
}
