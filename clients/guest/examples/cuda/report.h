/* Shared by the examples: print the last wasi:cuda error to stderr and pass the code on. */
#ifndef EXAMPLES_REPORT_H
#define EXAMPLES_REPORT_H

#include <tensorwasm/cuda.h>
#include <unistd.h>

#define EXPORT(name) __attribute__((export_name(name)))

static int32_t report(int32_t code) {
    char message[WASI_CUDA_MAX_ERROR_BYTES];
    int32_t n = wasi_cuda_last_error_copy(message, sizeof message);
    if (n > 0) {
        (void)write(2, message, (size_t)n);
        (void)write(2, "\n", 1);
    }
    return code;
}

#endif
