// saxpy: y[i] = alpha * x[i] + y[i] for i < n (f32, computed as one fused multiply-add).
//
// Parameters: x (.u64, read), y (.u64, read and written), alpha (.f32), n (int, .u32).
// Launch: 1-D like vector_add, i = blockIdx.x * blockDim.x + threadIdx.x. Only the threads
// of the first y/z slice (threadIdx.y == threadIdx.z == blockIdx.y == blockIdx.z == 0)
// work: y is read and written, so a repeated update would race and apply more than once.

extern "C" __global__ void saxpy(const float* x, float* y, float alpha, int n) {
    if ((threadIdx.y | threadIdx.z | blockIdx.y | blockIdx.z) != 0) {
        return;
    }
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = fmaf(alpha, x[i], y[i]);
    }
}
