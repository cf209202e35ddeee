// matmul: C[m x n] = A[m x k] @ B[k x n], f32, row-major, tiled through shared memory.
//
// Parameters: a, b (.u64, read), c (.u64, written), m, n, k (int, .u32).
// Launch: block (16,16,1) exactly (TILE x TILE); grid (ceil(n / 16), ceil(m / 16), 1).
// Thread (x, y) of block (bx, by) computes C[by*16 + y][bx*16 + x] when that is inside
// m x n. Any other block shape does nothing (the tiles would not match the shared arrays).
// Each C element accumulates its k products in order with fused multiply-adds.

#define TILE 16

extern "C" __global__ void matmul(const float* a, const float* b, float* c, int m, int n,
                                  int k) {
    if (blockDim.x != TILE || blockDim.y != TILE || blockDim.z != 1) {
        return;
    }
    __shared__ float a_tile[TILE][TILE];
    __shared__ float b_tile[TILE][TILE];

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const long long row = static_cast<long long>(blockIdx.y) * TILE + ty;
    const long long col = static_cast<long long>(blockIdx.x) * TILE + tx;

    float acc = 0.0f;
    for (long long t = 0; t < k; t += TILE) {
        const long long a_col = t + tx;
        const long long b_row = t + ty;
        a_tile[ty][tx] = (row < m && a_col < k) ? a[row * k + a_col] : 0.0f;
        b_tile[ty][tx] = (b_row < k && col < n) ? b[b_row * n + col] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; ++i) {
            acc = fmaf(a_tile[ty][i], b_tile[i][tx], acc);
        }
        __syncthreads();
    }
    if (row < m && col < n) {
        c[row * n + col] = acc;
    }
}
