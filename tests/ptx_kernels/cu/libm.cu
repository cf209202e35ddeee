// CUDA's libm as users call it: sinf/cosf (with their large-argument path, a .global
// table and local memory), logf, powf, tanhf, erff, atan2f, cbrtf; and __constant__ data.
__constant__ float weights[4] = {0.5f, -1.25f, 2.0f, 0.125f};

extern "C" __global__ void libm(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        y[i] = sinf(v) + cosf(v) + logf(fabsf(v) + 1.0f) + powf(fabsf(v), 1.5f) + tanhf(v) +
               erff(v) + atan2f(v, 2.0f) + cbrtf(v) + weights[i & 3];
    }
}
