// reduce_sum: *output += input[0] + ... + input[n - 1] (f32).
//
// The kernel accumulates into output with atomicAdd: zero *output before the launch to get
// the sum (or leave a value there to add to it). The order of the additions, and so the
// last bits of the result, depends on the hardware schedule.
//
// Parameters: input (.u64, read), output (.u64, read and written, one f32), n (int, .u32).
// Launch: 1-D with a grid-stride loop, so any grid sums all n elements: thread
// i = blockIdx.x * blockDim.x + threadIdx.x adds input[i], input[i + stride], ... where
// stride = gridDim.x * blockDim.x; e.g. block (256,1,1), grid (min(ceil(n / 256), 1024),1,1).
// Each block reduces its partial sums in shared memory and thread 0 adds the block's total
// to *output. Only the first y/z slice contributes (a repeated slice would add twice).

#define MAX_BLOCK_THREADS 1024

extern "C" __global__ void reduce_sum(const float* input, float* output, int n) {
    __shared__ float partial[MAX_BLOCK_THREADS];

    const unsigned int tid =
        threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned int block_threads = blockDim.x * blockDim.y * blockDim.z;
    const bool first_slice = (threadIdx.y | threadIdx.z | blockIdx.y | blockIdx.z) == 0;

    float sum = 0.0f;
    if (first_slice) {
        const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
        for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
             i < n; i += stride) {
            sum += input[i];
        }
    }
    partial[tid] = sum;
    __syncthreads();
    for (unsigned int half = MAX_BLOCK_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half && tid + half < block_threads) {
            partial[tid] += partial[tid + half];
        }
        __syncthreads();
    }
    if (tid == 0 && (blockIdx.y | blockIdx.z) == 0) {
        atomicAdd(output, partial[0]);
    }
}
