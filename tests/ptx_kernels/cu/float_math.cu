// Float math as nvcc compiles it without fast-math: sqrtf, expf, floorf, rintf,
// conversions, division, rsqrtf, the __sinf/__cosf intrinsics and double precision.
extern "C" __global__ void float_math(const float* x, float* out, double* dout, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float v = x[i];
    out[6 * i + 0] = sqrtf(fabsf(v));
    out[6 * i + 1] = expf(v);
    out[6 * i + 2] = __sinf(v) + __cosf(v);
    out[6 * i + 3] = floorf(v) + rintf(v * 3.0f) + (float)__float2int_rn(v * 100.0f);
    out[6 * i + 4] = fminf(v, 0.5f) / (1.0f + v * v);
    out[6 * i + 5] = rsqrtf(1.0f + v * v);
    double d = (double)v;
    dout[i] = sqrt(d * d + 1.0) / 3.0 + (double)(long long)(v * 1000.0f);
}
