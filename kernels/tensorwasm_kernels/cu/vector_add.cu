// vector_add: c[i] = a[i] + b[i] for i < n (f32).
//
// Parameters (the original's layout): a, b, c are device pointers (.u64), n is an int
// (.u32 in PTX; guests pass it as a u32 or i32 argv record).
// Launch: 1-D, i = blockIdx.x * blockDim.x + threadIdx.x; conventionally block (256,1,1)
// and grid (ceil(n / 256),1,1). Threads with i >= n do nothing; elements the grid does not
// reach are left untouched. The y and z dimensions only repeat the same (idempotent) work.
// The index is computed in 64 bits so that no grid size can wrap it.

extern "C" __global__ void vector_add(const float* a, const float* b, float* c, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        c[i] = a[i] + b[i];
    }
}
