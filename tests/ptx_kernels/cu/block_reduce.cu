// Per-block sums of ints in dynamic shared memory with __syncthreads, and their total
// through a 64-bit atomicAdd.
extern "C" __global__ void block_reduce(const int* in, int* block_sums,
                                        unsigned long long* total, int n) {
    extern __shared__ int partial[];
    unsigned t = threadIdx.x;
    int sum = 0;
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) {
        sum += in[i];
    }
    partial[t] = sum;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        __syncthreads();
    }
    if (t == 0) {
        block_sums[blockIdx.x] = partial[0];
        atomicAdd(total, (unsigned long long)(long long)partial[0]);
    }
}
