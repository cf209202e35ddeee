// A per-thread array indexed by data: nvcc keeps it in local memory.
extern "C" __global__ void local_array(const int* in, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    int v[8];
    for (int k = 0; k < 8; ++k) {
        v[k] = in[(i + k) % n] * (k + 1);
    }
    int index = in[i] & 7;
    out[i] = v[index] + v[(index + 3) & 7];
}
