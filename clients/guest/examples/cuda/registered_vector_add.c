/* vector_add over f32[64] with a kernel from the gateway's kernel registry: the guest
 * carries no PTX, it asks for `vector_add.f32@1.0.0` by name (kernel_by_name) and launches
 * the id it gets with wasi_cuda_launch.
 *
 * Publish the kernel first (the kernel library's vector_add.ptx):
 *   tensorwasm kernel publish vector_add.f32 1.0.0 --ptx-file vector_add.ptx --sm 80 \
 *       --key-file registry.key
 *
 * `run` returns 0, a negative wasi:cuda code (its message on stderr), or 1 + the first
 * index where c[i] != a[i] + b[i]. `missing` asks for a version nobody published and
 * returns the code it gets (-3, invalid_kernel).
 */
#include "report.h"

#define N 64

static float a[N], b[N], c[N];

EXPORT("run") int32_t run(void) {
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = 2.0f * (float)i + 0.5f;
        c[i] = -1.0f;
    }
    int64_t kernel = tw_gpu_kernel_by_name_str("vector_add.f32", "1.0.0");
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

EXPORT("missing") int32_t missing(void) {
    return report((int32_t)tw_gpu_kernel_by_name_str("vector_add.f32", "9.9.9"));
}
