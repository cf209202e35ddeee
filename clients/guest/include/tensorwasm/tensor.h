/* TensorWasm guest SDK: `wasi:tensor/host@0.1.0` (streamed chunks, staged input) and
 * `wasi:scheduler/host@0.1.0` (cooperative deadlines), the original Craton TensorWasm's
 * raw core-wasm imports, for C guests built with `clang --target=wasm32-wasi`.
 *
 * Each function is also registered under its hyphenated name (`emit-chunk`, `input-len`,
 * `read-input`, `deadline-remaining-ms`); these declarations use the underscore ones.
 * Pointers are offsets into the guest's exported `memory`; a range outside it traps.
 */
#ifndef TENSORWASM_TENSOR_H
#define TENSORWASM_TENSOR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WASI_TENSOR_MODULE "wasi:tensor/host@0.1.0"
#define WASI_SCHEDULER_MODULE "wasi:scheduler/host@0.1.0"
#ifndef TW_IMPORT
#define TW_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#endif

/* emit_chunk / flush codes (stable). A refused chunk is refused whole. */
#define WASI_TENSOR_OK 0
#define WASI_TENSOR_ERR_NOT_ENABLED (-1)   /* no chunk channel (a pre-initialisation run) */
#define WASI_TENSOR_ERR_OVER_CAP (-2)      /* chunk > 64 KiB, or > 64 MiB in this call */
#define WASI_TENSOR_ERR_CLIENT_GONE (-3)   /* the streaming client went away: wind down */
#define WASI_TENSOR_MAX_CHUNK_BYTES (64u << 10)
#define WASI_TENSOR_MAX_STREAM_BYTES (64u << 20)

/* yield verdicts (stable): treat any non-zero as "wind down". */
#define WASI_SCHEDULER_CONTINUE 0
#define WASI_SCHEDULER_DEADLINE_NEAR 1     /* less than ~10 ms left */
#define WASI_SCHEDULER_STOP 2              /* the deadline passed or the call was cancelled */
#define WASI_SCHEDULER_UNBOUNDED 0xFFFFFFFFu

/* Sends `len` bytes as one chunk: on a streaming call at once, else appended to the
 * call's result. */
TW_IMPORT(WASI_TENSOR_MODULE, "emit_chunk")
int32_t wasi_tensor_emit_chunk(const void *data, uint32_t len);

/* Chunks go out as they are emitted; 0, or -3 once the client has gone (implicit at
 * return). */
TW_IMPORT(WASI_TENSOR_MODULE, "flush")
int32_t wasi_tensor_flush(void);

/* The byte length of the input the caller staged for this call. */
TW_IMPORT(WASI_TENSOR_MODULE, "input_len")
uint32_t wasi_tensor_input_len(void);

/* Copies the next at most `len` bytes of the input to `dst` (a cursor): the count, 0
 * once everything was read. */
TW_IMPORT(WASI_TENSOR_MODULE, "read_input")
int32_t wasi_tensor_read_input(void *dst, uint32_t len);

/* A cooperative yield point: WASI_SCHEDULER_CONTINUE, _DEADLINE_NEAR or _STOP. */
TW_IMPORT(WASI_SCHEDULER_MODULE, "yield")
uint32_t wasi_scheduler_yield(void);

/* Milliseconds before the call's deadline (WASI_SCHEDULER_UNBOUNDED: none). */
TW_IMPORT(WASI_SCHEDULER_MODULE, "deadline_remaining_ms")
uint32_t wasi_scheduler_deadline_remaining_ms(void);

#ifdef __cplusplus
}
#endif
#endif /* TENSORWASM_TENSOR_H */
