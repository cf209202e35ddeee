/* vector_add over f32[64] through wasi:cuda: c[i] == a[i] + b[i] for every i.
 *
 * `run` returns 0, a negative wasi:cuda code (its message on stderr), or 1 + the first
 * index where c[i] != a[i] + b[i]. The PTX is the kernel library's canonical
 * vector_add.ptx, embedded at build time (C23 #embed).
 */
#include "report.h"

#define N 64

static const char PTX[] = {
#embed "vector_add.ptx"
    , 0};

static float a[N], b[N], c[N];

EXPORT("run") int32_t run(void) {
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = 2.0f * (float)i + 0.5f;
        c[i] = -1.0f;
    }
    int64_t kernel = wasi_cuda_load_ptx_str(PTX, "vector_add");
    if (kernel < 0) return report((int32_t)kernel);
    wasi_cuda_argv argv;
    wasi_cuda_argv_init(&argv);
    wasi_cuda_argv_ptr(&argv, a, sizeof a);
    wasi_cuda_argv_ptr(&argv, b, sizeof b);
    wasi_cuda_argv_ptr(&argv, c, sizeof c);
    wasi_cuda_argv_u32(&argv, N);
    int32_t rc = wasi_cuda_launch_argv(kernel, 1, 1, 1, N, 1, 1, 0, &argv);
    if (rc != WASI_CUDA_OK) return report(rc);
    rc = wasi_cuda_sync();
    if (rc != WASI_CUDA_OK) return report(rc);
    for (int i = 0; i < N; i++) {
        if (c[i] != a[i] + b[i]) return i + 1;
    }
    return 0;
}
