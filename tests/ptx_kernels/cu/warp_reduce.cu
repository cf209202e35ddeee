// Warp sums by __shfl_down_sync, broadcast by __shfl_sync, and the warp's votes.
extern "C" __global__ void warp_reduce(const float* in, float* warp_sums, unsigned* votes,
                                       int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? in[i] : 0.0f;
    unsigned ballot = __ballot_sync(0xffffffffu, v > 0.0f);
    unsigned any = __any_sync(0xffffffffu, v > 1.0f);
    unsigned all = __all_sync(0xffffffffu, v > -3.0f);
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    float first = __shfl_sync(0xffffffffu, v, 0);
    float mirrored = __shfl_xor_sync(0xffffffffu, first, 1);
    if ((threadIdx.x & 31) == 0) {
        warp_sums[i / 32] = mirrored;
        votes[2 * (i / 32)] = ballot;
        votes[2 * (i / 32) + 1] = any | (all << 1);
    }
}
