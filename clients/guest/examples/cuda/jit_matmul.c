/* A 48x40 @ 40x56 matmul through the one-call tensor op `tw_gpu_matmul` (the jit cache
 * emits a tiled kernel for this shape once; the dispatcher runs it), checked against a
 * reference computed here in the guest. Neither dimension is a multiple of the 16x16
 * tile, so the kernel's edge tiles are exercised.
 *
 * The inputs are small integers, so every product and partial sum is exact in f32 and the
 * result does not depend on the summation order: the check is exact equality. `run`
 * returns 0, a negative code, or 1 + the first wrong index (row * N + col). `bad_dims`
 * asks for a 0-row matmul and returns what the host answered (-9, invalid_args).
 */
#include "report.h"

#define M 48
#define N 56
#define K 40

static float a[M * K], b[K * N], c[M * N], expected[M * N];

EXPORT("run") int32_t run(void) {
    for (int i = 0; i < M * K; i++) a[i] = (float)((i * 7) % 13 - 6);
    for (int i = 0; i < K * N; i++) b[i] = (float)((i * 5) % 11 - 5);
    for (int i = 0; i < M * N; i++) c[i] = -1.0f;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int p = 0; p < K; p++) sum += a[i * K + p] * b[p * N + j];
            expected[i * N + j] = sum;
        }
    }
    int32_t rc = tw_gpu_matmul(a, b, c, M, N, K);
    if (rc != WASI_CUDA_OK) return report(rc);
    for (int i = 0; i < M * N; i++) {
        if (c[i] != expected[i]) return i + 1;
    }
    return 0;
}

EXPORT("bad_dims") int32_t bad_dims(void) { return tw_gpu_matmul(a, b, c, 0, N, K); }
