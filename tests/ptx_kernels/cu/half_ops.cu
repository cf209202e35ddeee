// Half precision: out = max(fma(alpha, x, y) * x + y, 0) in __half arithmetic.
#include <cuda_fp16.h>

extern "C" __global__ void half_ops(const __half* x, const __half* y, __half* out,
                                    float alpha, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        __half a = __float2half(alpha);
        __half f = __hfma(a, x[i], y[i]);
        __half v = __hadd(__hmul(f, x[i]), y[i]);
        out[i] = __hmax(v, __float2half(0.0f));
    }
}
