/* saxpy (y = alpha * x + y) with a kernel the jit cache emits on request: `jit_kernel`
 * gives a kernel id that wasi_cuda_launch takes like one from wasi_cuda_load_ptx. The
 * guest ships no PTX. The result is checked against the same sum computed here (one
 * fused multiply-add per element: exact for these small values).
 *
 * `run` returns 0, a negative code, or 1 + the first wrong index. `unknown_op` asks for
 * an op the jit cache does not have and returns its code (-9, invalid_args).
 */
#include "report.h"

#define COUNT 1000
#define BLOCK 128

static float x[COUNT], y[COUNT], expected[COUNT];

EXPORT("run") int32_t run(void) {
    const float alpha = 2.5f;
    for (int i = 0; i < COUNT; i++) {
        x[i] = (float)(i % 17 - 8);
        y[i] = (float)(i % 5);
        expected[i] = alpha * x[i] + y[i];
    }
    int64_t kernel = tw_gpu_jit_kernel_str("saxpy", "");
    if (kernel < 0) return report((int32_t)kernel);
    /* A second request for the same spec is the same kernel (loaded once per instance). */
    if (tw_gpu_jit_kernel_str("saxpy", "") != kernel) return -100;
    wasi_cuda_argv argv;
    wasi_cuda_argv_init(&argv);
    wasi_cuda_argv_ptr(&argv, x, sizeof x);
    wasi_cuda_argv_ptr(&argv, y, sizeof y);
    wasi_cuda_argv_f32(&argv, alpha);
    wasi_cuda_argv_u32(&argv, COUNT);
    int32_t rc = wasi_cuda_launch_argv(kernel, (COUNT + BLOCK - 1) / BLOCK, 1, 1, BLOCK, 1, 1,
                                       0, &argv);
    if (rc != WASI_CUDA_OK) return report(rc);
    rc = wasi_cuda_sync();
    if (rc != WASI_CUDA_OK) return report(rc);
    for (int i = 0; i < COUNT; i++) {
        if (y[i] != expected[i]) return i + 1;
    }
    return 0;
}

EXPORT("unknown_op") int32_t unknown_op(void) {
    return (int32_t)tw_gpu_jit_kernel_str("no_such_op", "n=4");
}
