// Patterns users write with atomics and warps: an inclusive warp scan by __shfl_up_sync,
// a float atomic max through an atomicCAS loop, atomicExch/Min/Max/Inc, byte shuffles
// (__byte_perm), bit fields, and a pointer that is shared or global at run time.
__device__ float atomic_max_float(float* address, float value) {
    int* bits = (int*)address;
    int old = *bits;
    while (__int_as_float(old) < value) {
        int assumed = old;
        old = atomicCAS(bits, assumed, __float_as_int(value));
        if (old == assumed) {
            break;
        }
    }
    return __int_as_float(old);
}

extern "C" __global__ void warp_scan(const int* in, int* scan, float* max_out, int* stats,
                                     unsigned* bytes, int n) {
    __shared__ int staging[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? in[i] : 0;
    int lane = threadIdx.x & 31;
    for (int offset = 1; offset < 32; offset <<= 1) {
        int up = __shfl_up_sync(0xffffffffu, v, offset);
        if (lane >= offset) {
            v += up;
        }
    }
    // A pointer into shared or global memory, chosen per thread: generic loads and stores.
    int* target = (threadIdx.x & 1) ? &staging[threadIdx.x] : &scan[i];
    if (i < n) {
        *target = v;
    }
    __syncthreads();
    if (i < n && (threadIdx.x & 1)) {
        scan[i] = staging[threadIdx.x];
    }
    if (i < n) {
        float f = (float)in[i] * 0.25f;
        atomic_max_float(max_out, f);
        atomicMin(&stats[0], in[i]);
        atomicMax(&stats[1], in[i]);
        atomicInc((unsigned*)&stats[2], 1000u);
        atomicExch(&stats[3], 7);
        unsigned x = (unsigned)in[i];
        bytes[i] = __byte_perm(x, 0x01020304u, 0x5140) ^ ((x >> 8) & 0xFFu) ^ (__clzll(x) << 24);
    }
}
