/* Auto-offload from C: `matmul` is a plain C loop, declared with cuda.h's TENSORWASM_OFFLOAD
 * as the `matmul` op. Deployed with `tensorwasm deploy --offload`, a call to the export runs
 * on the dispatcher (the jit cache's matmul kernel) and the loop never runs; deployed
 * without the flag, the loop runs. The module imports nothing from the GPU modules.
 *
 * Use it on one instance: `fill(m, n, k)` writes A (m x k), B (k x n) into static buffers
 * (at most 256 x 256 each) and C = -1; `a_buffer()`, `b_buffer()`, `c_buffer()` give their
 * addresses for `matmul(a, b, c, m, n, k)`; `check(m, n, k)` recomputes A @ B with its own
 * loop and returns 0, or 1 + the first wrong index of C. The inputs are small integers, so
 * every sum is exact in f32 and the comparison is exact equality.
 */
#include <stdint.h>
#include <tensorwasm/cuda.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define MAX_DIM 256

TENSORWASM_OFFLOAD({"matmul": {"op": "matmul", "args": ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]}});

static float a[MAX_DIM * MAX_DIM], b[MAX_DIM * MAX_DIM], c[MAX_DIM * MAX_DIM];

EXPORT("a_buffer") int32_t a_buffer(void) { return (int32_t)(uintptr_t)a; }
EXPORT("b_buffer") int32_t b_buffer(void) { return (int32_t)(uintptr_t)b; }
EXPORT("c_buffer") int32_t c_buffer(void) { return (int32_t)(uintptr_t)c; }

static int fits(int32_t m, int32_t n, int32_t k) {
    return m > 0 && n > 0 && k > 0 && m <= MAX_DIM && n <= MAX_DIM && k <= MAX_DIM;
}

/* 0, or -1 when a dimension is not in [1, 256]. */
EXPORT("fill") int32_t fill(int32_t m, int32_t n, int32_t k) {
    if (!fits(m, n, k)) return -1;
    for (int32_t i = 0; i < m * k; i++) a[i] = (float)((i * 7) % 13 - 6);
    for (int32_t i = 0; i < k * n; i++) b[i] = (float)((i * 5) % 11 - 5);
    for (int32_t i = 0; i < m * n; i++) c[i] = -1.0f;
    return 0;
}

/* C[m x n] = A[m x k] @ B[k x n], row-major f32: the body auto-offload replaces. */
EXPORT("matmul")
int32_t matmul(const float *lhs, const float *rhs, float *out, int32_t m, int32_t n, int32_t k) {
    for (int32_t i = 0; i < m; i++) {
        for (int32_t j = 0; j < n; j++) {
            float sum = 0.0f;
            for (int32_t p = 0; p < k; p++) sum += lhs[i * k + p] * rhs[p * n + j];
            out[i * n + j] = sum;
        }
    }
    return 0;
}

/* 0 when C == A @ B (computed here, not through `matmul`), else 1 + the first wrong
 * index; -1 for dimensions `fill` refuses. */
EXPORT("check") int32_t check(int32_t m, int32_t n, int32_t k) {
    if (!fits(m, n, k)) return -1;
    for (int32_t i = 0; i < m; i++) {
        for (int32_t j = 0; j < n; j++) {
            float sum = 0.0f;
            for (int32_t p = 0; p < k; p++) sum += a[i * k + p] * b[p * n + j];
            if (c[i * n + j] != sum) return i * n + j + 1;
        }
    }
    return 0;
}
