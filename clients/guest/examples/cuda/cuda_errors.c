/* The error paths of wasi:cuda, each checked for its code and a last_error message:
 * -2 invalid_pointer, -3 invalid_kernel, -4 malformed_ptx, -8 invalid_dimensions,
 * -9 invalid_args, -10 kernel_args_unsupported, -6 quota_exceeded.
 *
 * `run` returns 0 when every check holds, else 100 * (check number) + the code it got
 * instead (as a positive number), e.g. 305 for check 3 answering -5.
 */
#include "report.h"

static const char PTX[] = {
#embed "vector_add.ptx"
    , 0};
static const char GARBAGE[] = "this is not PTX";
static float buffer[64];
static uint8_t raw_argv[WASI_CUDA_MAX_ARGV_BYTES + 1];

static int32_t check(int number, int32_t got, int32_t expected) {
    if (got != expected) return 100 * number - got;
    if (wasi_cuda_last_error_len() <= 0) return 100 * number + 99; /* no message */
    return 0;
}

#define CHECK(number, got, expected)                          \
    do {                                                      \
        int32_t failed = check(number, (got), (expected));    \
        if (failed) return report(failed);                    \
    } while (0)

EXPORT("run") int32_t run(void) {
    /* -2: the PTX range lies outside linear memory. */
    CHECK(1, (int32_t)wasi_cuda_load_ptx((const void *)0xFFFFFF00u, 16, "vector_add", 10),
          WASI_CUDA_ERR_INVALID_POINTER);
    /* -3: a kernel id this instance never loaded. */
    CHECK(2, wasi_cuda_launch(99, 1, 1, 1, 1, 1, 1, 0, 0, 0), WASI_CUDA_ERR_INVALID_KERNEL);
    /* -4: text that declares no `.entry vector_add`. */
    CHECK(3, (int32_t)wasi_cuda_load_ptx_str(GARBAGE, "vector_add"),
          WASI_CUDA_ERR_MALFORMED_PTX);
    /* -6: more PTX than one load may carry (8 MiB). */
    CHECK(4, (int32_t)wasi_cuda_load_ptx(PTX, WASI_CUDA_MAX_PTX_BYTES + 1, "vector_add", 10),
          WASI_CUDA_ERR_QUOTA_EXCEEDED);

    int64_t kernel = wasi_cuda_load_ptx_str(PTX, "vector_add");
    if (kernel < 0) return report((int32_t)kernel);
    wasi_cuda_argv argv;
    wasi_cuda_argv_init(&argv);
    wasi_cuda_argv_ptr(&argv, buffer, sizeof buffer);
    wasi_cuda_argv_ptr(&argv, buffer, sizeof buffer);
    wasi_cuda_argv_ptr(&argv, buffer, sizeof buffer);
    wasi_cuda_argv_u32(&argv, 64);
    /* -8: a block with a zero dimension, and one of 2048 threads. */
    CHECK(5, wasi_cuda_launch_argv(kernel, 1, 1, 1, 0, 1, 1, 0, &argv),
          WASI_CUDA_ERR_INVALID_DIMENSIONS);
    CHECK(6, wasi_cuda_launch_argv(kernel, 1, 1, 1, 32, 32, 2, 0, &argv),
          WASI_CUDA_ERR_INVALID_DIMENSIONS);
    /* -9: an argv record with an unknown tag. */
    raw_argv[0] = 0x09;
    CHECK(7, wasi_cuda_launch(kernel, 1, 1, 1, 64, 1, 1, 0, raw_argv, 5),
          WASI_CUDA_ERR_INVALID_ARGS);
    /* -10: argv longer than 4096 bytes. */
    CHECK(8, wasi_cuda_launch(kernel, 1, 1, 1, 64, 1, 1, 0, raw_argv, sizeof raw_argv),
          WASI_CUDA_ERR_KERNEL_ARGS_UNSUPPORTED);
    /* -2 again for a pointer record outside linear memory. */
    wasi_cuda_argv far;
    wasi_cuda_argv_init(&far);
    wasi_cuda_argv_ptr(&far, (const void *)0xFFFFFF00u, 256);
    CHECK(9, wasi_cuda_launch_argv(kernel, 1, 1, 1, 64, 1, 1, 0, &far),
          WASI_CUDA_ERR_INVALID_POINTER);
    /* Nothing bad was queued: sync succeeds. */
    int32_t rc = wasi_cuda_sync();
    return rc == WASI_CUDA_OK ? 0 : report(1000 - rc);
}
