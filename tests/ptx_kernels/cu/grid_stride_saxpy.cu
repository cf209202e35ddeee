// y = a * x + y over a grid-stride loop with 64-bit indices (nvcc contracts it to fma).
extern "C" __global__ void grid_stride_saxpy(float a, const float* __restrict__ x, float* y,
                                             long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = a * x[i] + y[i];
    }
}
