// float4 loads and stores (ld/st .v4) and an int2 (ld/st .v2), as user code writes them.
extern "C" __global__ void vector_types(const float4* in, float4* out, int2* pairs, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float4 v = in[i];
        out[i] = make_float4(v.w * 2.0f, v.z + 1.0f, v.y, -v.x);
        int2 p = pairs[i];
        pairs[i] = make_int2(p.y - p.x, p.x * 3);
    }
}
