/* matmul 64x64 through wasi:cuda (the kernel library's tiled matmul), checked against a
 * reference computed here in the guest.
 *
 * The inputs are small integers, so every product and partial sum is exact in f32 and the
 * result does not depend on the summation order: the check is exact equality. `run`
 * returns 0, a negative wasi:cuda code, or 1 + the first wrong index (row * 64 + col).
 */
#include "report.h"

#define N 64

static const char PTX[] = {
#embed "matmul.ptx"
    , 0};

static float a[N * N], b[N * N], c[N * N], expected[N * N];

EXPORT("run") int32_t run(void) {
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            a[i * N + j] = (float)((i * 7 + j * 3) % 13 - 6);
            b[i * N + j] = (float)((i * 5 + j * 11) % 9 - 4);
            c[i * N + j] = -1.0f;
        }
    }
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int k = 0; k < N; k++) sum += a[i * N + k] * b[k * N + j];
            expected[i * N + j] = sum;
        }
    }
    int64_t kernel = wasi_cuda_load_ptx_str(PTX, "matmul");
    if (kernel < 0) return report((int32_t)kernel);
    wasi_cuda_argv argv;
    wasi_cuda_argv_init(&argv);
    wasi_cuda_argv_ptr(&argv, a, sizeof a);
    wasi_cuda_argv_ptr(&argv, b, sizeof b);
    wasi_cuda_argv_ptr(&argv, c, sizeof c);
    wasi_cuda_argv_i32(&argv, N); /* m */
    wasi_cuda_argv_i32(&argv, N); /* n */
    wasi_cuda_argv_i32(&argv, N); /* k */
    int32_t rc = wasi_cuda_launch_argv(kernel, N / 16, N / 16, 1, 16, 16, 1, 0, &argv);
    if (rc != WASI_CUDA_OK) return report(rc);
    rc = wasi_cuda_sync();
    if (rc != WASI_CUDA_OK) return report(rc);
    for (int i = 0; i < N * N; i++) {
        if (c[i] != expected[i]) return i + 1;
    }
    return 0;
}
