/* Native baseline of guests/compute.wat, built with `gcc -O2` by the `compute` group.
 *
 * A persistent request loop, so that process start-up is outside every measurement:
 * each stdin line "KERNEL ARG REPS" (KERNEL is loop or fib) runs the kernel REPS times
 * and answers one line "ELAPSED_NS RESULT", timed with clock_gettime(CLOCK_MONOTONIC)
 * around the REPS runs only. RESULT is the last run's value (u64 for loop, u32 for fib),
 * which the group checks against the wasm result.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* noipa: no inlining, cloning or pure/const inference, so repeated calls with the same
 * argument are not merged and the argument is not constant-propagated. */
__attribute__((noipa)) static uint64_t loop_kernel(uint64_t n) {
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) {
        acc = (acc ^ i) + UINT64_C(0x9E3779B97F4A7C15);
    }
    return acc;
}

static uint32_t fib_rec(uint32_t n) {
    return n < 2 ? n : fib_rec(n - 1) + fib_rec(n - 2);
}

__attribute__((noipa)) static uint32_t fib(uint32_t n) { return fib_rec(n); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(void) {
    char kernel[16];
    unsigned long long arg, reps;
    while (scanf("%15s %llu %llu", kernel, &arg, &reps) == 3) {
        uint64_t result = 0;
        int64_t start, elapsed;
        if (strcmp(kernel, "loop") == 0) {
            start = now_ns();
            for (unsigned long long r = 0; r < reps; r++) result = loop_kernel(arg);
            elapsed = now_ns() - start;
        } else if (strcmp(kernel, "fib") == 0) {
            start = now_ns();
            for (unsigned long long r = 0; r < reps; r++) result = fib((uint32_t)arg);
            elapsed = now_ns() - start;
        } else {
            fprintf(stderr, "unknown kernel %s\n", kernel);
            return 2;
        }
        printf("%lld %llu\n", (long long)elapsed, (unsigned long long)result);
        fflush(stdout);
    }
    return 0;
}
