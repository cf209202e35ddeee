/* TensorWasm guest SDK: the `wasi:cuda/host@0.2.0` ABI (compatible with the original
 * Craton TensorWasm) and our `tensorwasm:gpu/host@0.1.0` extension, for C guests built
 * with `clang --target=wasm32-wasi`.
 *
 * Every function returns 0 (or a kernel id / handle / value >= 0) on success and a
 * negative WASI_CUDA_ERR_* code on failure; the message of the last failure is
 * available through wasi_cuda_last_error_len / wasi_cuda_last_error_copy (at most 512
 * bytes of UTF-8, "<code label>: <message>").
 *
 * Launches are queued and run in batches: a launch returns 0 once validated and queued;
 * its own failure (e.g. launch_failed) is reported by the next wasi_cuda_sync. Pointer
 * arguments (WASI_CUDA_ARG_PTR) are ranges of linear memory staged to the device before
 * the batch runs and copied back at sync, as under CUDA unified memory.
 *
 * Caps: PTX <= 8 MiB per load, 256 kernels per instance, block dims in [1, 1024] with at
 * most 1024 threads, grid dims in [1, 2^31 - 1], argv <= 128 records and 4096 bytes.
 */
#ifndef TENSORWASM_CUDA_H
#define TENSORWASM_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WASI_CUDA_MODULE "wasi:cuda/host@0.2.0"
#define TW_GPU_MODULE "tensorwasm:gpu/host@0.1.0"
#define TW_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

/* Error codes (stable). */
#define WASI_CUDA_OK 0
#define WASI_CUDA_ERR_NOT_AVAILABLE (-1)
#define WASI_CUDA_ERR_INVALID_POINTER (-2)
#define WASI_CUDA_ERR_INVALID_KERNEL (-3)
#define WASI_CUDA_ERR_MALFORMED_PTX (-4)
#define WASI_CUDA_ERR_LAUNCH_FAILED (-5)
#define WASI_CUDA_ERR_QUOTA_EXCEEDED (-6)
#define WASI_CUDA_ERR_INTERNAL (-7)
#define WASI_CUDA_ERR_INVALID_DIMENSIONS (-8)
#define WASI_CUDA_ERR_INVALID_ARGS (-9)
#define WASI_CUDA_ERR_KERNEL_ARGS_UNSUPPORTED (-10)

/* Typed argv record tags: [tag u8][value, little-endian], packed, nothing after. */
#define WASI_CUDA_ARG_I32 0x01
#define WASI_CUDA_ARG_I64 0x02
#define WASI_CUDA_ARG_F32 0x03
#define WASI_CUDA_ARG_F64 0x04
#define WASI_CUDA_ARG_U32 0x05
#define WASI_CUDA_ARG_U64 0x06
#define WASI_CUDA_ARG_PTR 0x07           /* u32 offset + u32 length in linear memory */
#define TW_GPU_ARG_DEVICE_BUFFER 0x08    /* u32 handle + u32 byte offset (extension) */

/* Caps. */
#define WASI_CUDA_MAX_PTX_BYTES (8u << 20)
#define WASI_CUDA_MAX_KERNELS 256
#define WASI_CUDA_MAX_ARGV_RECORDS 128
#define WASI_CUDA_MAX_ARGV_BYTES 4096
#define WASI_CUDA_MAX_BLOCK_THREADS 1024
#define WASI_CUDA_MAX_ERROR_BYTES 512
#define TW_GPU_MAX_DEVICE_BUFFERS 1024

/* ---- wasi:cuda/host@0.2.0 (the original's five raw imports) ------------------------ */

/* Loads PTX text and finds `entry`: a kernel id (>= 0) or an error code. */
TW_IMPORT(WASI_CUDA_MODULE, "wasi_cuda_load_ptx")
int64_t wasi_cuda_load_ptx(const void *ptx, uint32_t ptx_len, const char *entry,
                           uint32_t entry_len);

/* Validates and queues a launch of `kernel`: 0 or an error code. */
TW_IMPORT(WASI_CUDA_MODULE, "wasi_cuda_launch")
int32_t wasi_cuda_launch(int64_t kernel, int32_t grid_x, int32_t grid_y, int32_t grid_z,
                         int32_t block_x, int32_t block_y, int32_t block_z,
                         uint32_t shared_mem_bytes, const void *argv, uint32_t argv_len);

/* Runs what is queued, copies written buffers back: 0 or the first failure since the
 * last sync (its message in last_error). */
TW_IMPORT(WASI_CUDA_MODULE, "wasi_cuda_sync")
int32_t wasi_cuda_sync(void);

/* The byte length of the last error message (0: none). */
TW_IMPORT(WASI_CUDA_MODULE, "wasi_cuda_last_error_len")
int32_t wasi_cuda_last_error_len(void);

/* Copies up to `dst_len` bytes of the last error message: the count, or -2. */
TW_IMPORT(WASI_CUDA_MODULE, "wasi_cuda_last_error_copy")
int32_t wasi_cuda_last_error_copy(char *dst, uint32_t dst_len);

/* ---- tensorwasm:gpu/host@0.1.0 (extension) --------------------------------------- */

/* A device-resident buffer of `size_bytes` zeros, owned by this instance and freed at
 * its end; its bytes count against the tenant's GPU memory quota. A handle >= 1, or
 * -9 (size < 1), -6 (quota, device, or 1024 buffers). */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_buffer_alloc")
int32_t tw_gpu_buffer_alloc(int64_t size_bytes);

/* Frees a buffer (queued): 0, or -9 when this instance holds no such buffer. */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_buffer_free")
int32_t tw_gpu_buffer_free(int32_t handle);

/* Host to device: takes `len` bytes from `src` now and queues the copy to
 * [offset, offset + len) of the buffer. 0, -9 (handle), -2 (a range outside). */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_buffer_write")
int32_t tw_gpu_buffer_write(int32_t handle, uint64_t offset, const void *src, uint32_t len);

/* Device to host: runs what is queued, then copies [offset, offset + len) of the buffer
 * to `dst`. 0, -9, -2, or (like sync) the failure of a queued command. */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_buffer_read")
int32_t tw_gpu_buffer_read(int32_t handle, uint64_t offset, void *dst, uint32_t len);

/* GPU time of this instance's kernels so far, in ns (runs what is queued first). */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_time_ns")
int64_t tw_gpu_time_ns(void);

/* GPU time of all this tenant's kernels, in ns (a round trip to the dispatcher). */
TW_IMPORT(TW_GPU_MODULE, "tw_gpu_tenant_time_ns")
int64_t tw_gpu_tenant_time_ns(void);

/* ---- tensorwasm:gpu/host@0.1.0: jit kernels and one-call tensor ops --------------- */

/* A kernel emitted (once per op, params, dtype and target, fleet-wide) by the jit cache,
 * usable with wasi_cuda_launch: a kernel id >= 0, or -9 (bad op text or params, an op or
 * parameter the jit cache does not know), -1 (no jit cache), another code. `op` is an op
 * name (vector_add, saxpy, relu, neg, abs, sqrt, exp, add, sub, mul, div, max, min,
 * reduce_sum, matmul, conv2d) of at most 64 ASCII bytes; `params` is ASCII
 * "name=value,..." (e.g. "m=64,n=64,k=64,tile=16"; "dtype=f16" for a half-precision
 * elementwise kernel), at most 512 bytes, empty for none. Loaded once per instance.
 * wasm: (i32 op_ptr, i32 op_len, i32 params_ptr, i32 params_len) -> i64 */
TW_IMPORT(TW_GPU_MODULE, "jit_kernel")
int64_t tw_gpu_jit_kernel(const char *op, uint32_t op_len, const char *params,
                          uint32_t params_len);

/* A kernel published in the gateway's kernel registry (`tensorwasm kernel publish`), by
 * name and SemVer version: the tenant's own kernel of that name@version, else the shared
 * catalogue's. Returns a kernel id for wasi_cuda_launch (the manifest's entry), or -9 (a
 * name or version that is empty, over 64 bytes or not UTF-8), -2, -3 (none registered),
 * -4 (the stored PTX does not match the manifest's digest; the dispatcher verifies it
 * before loading), -1. Loaded once per instance.
 * wasm: (i32 name_ptr, i32 name_len, i32 version_ptr, i32 version_len) -> i64 */
TW_IMPORT(TW_GPU_MODULE, "kernel_by_name")
int64_t tw_gpu_kernel_by_name(const char *name, uint32_t name_len, const char *version,
                              uint32_t version_len);

/* C[m x n] = A[m x k] @ B[k x n], row-major f32 in linear memory, run by the dispatcher
 * (a jit-emitted tiled matmul): 0 once C is written, -9 (a dimension outside [1, 2^15]),
 * -2 (a matrix outside memory), or another code. Like sync, launches queued before it
 * run first.
 * wasm: (i32 a, i32 b, i32 c, i32 m, i32 n, i32 k) -> i32 */
TW_IMPORT(TW_GPU_MODULE, "matmul")
int32_t tw_gpu_matmul(const float *a, const float *b, float *c, uint32_t m, uint32_t n,
                      uint32_t k);

/* The jit matmul kernel's launch geometry: 16 x 16 threads per block, one output tile. */
#define TW_GPU_MATMUL_TILE 16

/* ---- auto-offload ------------------------------------------------------------------
 * TENSORWASM_OFFLOAD(<JSON>) puts the JSON, as written, into the module's
 * `tensorwasm.offload` custom section (top-level inline asm; checked with clang-19
 * --target=wasm32-wasi and wasm-ld: `__attribute__((section(...)))` makes a data segment,
 * not a custom section). Use it once per module, at file scope, e.g.
 *
 *   TENSORWASM_OFFLOAD({"matmul_f32": {"op": "matmul",
 *                       "args": ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]}});
 *   __attribute__((export_name("matmul_f32")))
 *   int32_t matmul_f32(const float *a, const float *b, float *c, int32_t m, int32_t n,
 *                      int32_t k) { ... a plain C loop, returning 0 ... }
 *
 * Deployed with `tensorwasm deploy --offload`, a call to the export runs on the GPU; the
 * loop is the fallback (docs/ARCHITECTURE.md, "Auto-offload"). No import is needed. */
#define TW_OFFLOAD_STR_(...) #__VA_ARGS__
#define TW_OFFLOAD_XSTR_(s) TW_OFFLOAD_STR_(s)
#define TENSORWASM_OFFLOAD(...)                                                          \
    __asm__(".section .custom_section.tensorwasm.offload,\"\",@\n"                      \
            ".ascii " TW_OFFLOAD_XSTR_(TW_OFFLOAD_STR_(__VA_ARGS__)) "\n"                 \
            ".text\n")

/* ---- argv builder ------------------------------------------------------------------ */

typedef struct wasi_cuda_argv {
    uint8_t bytes[WASI_CUDA_MAX_ARGV_BYTES];
    uint32_t len;
} wasi_cuda_argv;

static inline void wasi_cuda_argv_init(wasi_cuda_argv *argv) { argv->len = 0; }

/* Appends one record; records past 4096 bytes are dropped (the launch then has fewer
 * arguments than the kernel and fails with invalid_args). */
static inline void wasi_cuda_argv_record(wasi_cuda_argv *argv, uint8_t tag, const void *value,
                                         uint32_t value_len) {
    if (argv->len + 1 + value_len > WASI_CUDA_MAX_ARGV_BYTES) return;
    argv->bytes[argv->len] = tag;
    __builtin_memcpy(&argv->bytes[argv->len + 1], value, value_len);
    argv->len += 1 + value_len;
}

static inline void wasi_cuda_argv_i32(wasi_cuda_argv *argv, int32_t value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_I32, &value, 4);
}
static inline void wasi_cuda_argv_i64(wasi_cuda_argv *argv, int64_t value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_I64, &value, 8);
}
static inline void wasi_cuda_argv_f32(wasi_cuda_argv *argv, float value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_F32, &value, 4);
}
static inline void wasi_cuda_argv_f64(wasi_cuda_argv *argv, double value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_F64, &value, 8);
}
static inline void wasi_cuda_argv_u32(wasi_cuda_argv *argv, uint32_t value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_U32, &value, 4);
}
static inline void wasi_cuda_argv_u64(wasi_cuda_argv *argv, uint64_t value) {
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_U64, &value, 8);
}
/* A pointer argument: `len` bytes of linear memory from `ptr` (wasm32: little-endian). */
static inline void wasi_cuda_argv_ptr(wasi_cuda_argv *argv, const void *ptr, uint32_t len) {
    uint32_t value[2] = {(uint32_t)(uintptr_t)ptr, len};
    wasi_cuda_argv_record(argv, WASI_CUDA_ARG_PTR, value, 8);
}
/* A device buffer argument (extension): the buffer from `offset` to its end (`offset` a
 * multiple of 4, else the launch fails with -2). */
static inline void tw_gpu_argv_device_buffer(wasi_cuda_argv *argv, int32_t handle,
                                             uint32_t offset) {
    uint32_t value[2] = {(uint32_t)handle, offset};
    wasi_cuda_argv_record(argv, TW_GPU_ARG_DEVICE_BUFFER, value, 8);
}

/* Loads a NUL-free PTX string and entry name (lengths taken with strlen semantics). */
static inline int64_t wasi_cuda_load_ptx_str(const char *ptx, const char *entry) {
    return wasi_cuda_load_ptx(ptx, (uint32_t)__builtin_strlen(ptx), entry,
                              (uint32_t)__builtin_strlen(entry));
}

/* jit_kernel with NUL-free op and params strings. */
static inline int64_t tw_gpu_jit_kernel_str(const char *op, const char *params) {
    return tw_gpu_jit_kernel(op, (uint32_t)__builtin_strlen(op), params,
                             (uint32_t)__builtin_strlen(params));
}

/* kernel_by_name with NUL-terminated name and version. */
static inline int64_t tw_gpu_kernel_by_name_str(const char *name, const char *version) {
    return tw_gpu_kernel_by_name(name, (uint32_t)__builtin_strlen(name), version,
                                 (uint32_t)__builtin_strlen(version));
}

/* Launches with a built argv. */
static inline int32_t wasi_cuda_launch_argv(int64_t kernel, int32_t gx, int32_t gy, int32_t gz,
                                            int32_t bx, int32_t by, int32_t bz,
                                            uint32_t shared_mem_bytes,
                                            const wasi_cuda_argv *argv) {
    return wasi_cuda_launch(kernel, gx, gy, gz, bx, by, bz, shared_mem_bytes, argv->bytes,
                            argv->len);
}

#ifdef __cplusplus
}
#endif

#endif /* TENSORWASM_CUDA_H */
