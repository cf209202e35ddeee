;; The `memory_bandwidth` benchmark guest, run as a live instance: `setup(size)` allocates a
;; device buffer of `size` bytes (`tensorwasm:gpu` `tw_gpu_buffer_alloc`, a round trip) and
;; keeps its handle; `h2d(len)` copies linear memory [0, len) into the buffer
;; (`tw_gpu_buffer_write`, queued) and syncs (`wasi_cuda_sync`: the batch goes to the
;; dispatcher, which writes the device buffer); `d2h(len)` copies the buffer's first len bytes
;; into linear memory [0, len) (`tw_gpu_buffer_read`: a device-to-host copy, one round trip);
;; `noop()` is the call's floor. Each returns 0 or the first wasi:cuda code (< 0).
;;
;; Memory: 256 pages (16 MiB), all of it the copy's source or destination.
(module
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_alloc"
    (func $alloc (param i64) (result i32)))
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_write"
    (func $write (param i32 i64 i32 i32) (result i32)))
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_read"
    (func $read (param i32 i64 i32 i32) (result i32)))
  (import "wasi:cuda/host@0.2.0" "wasi_cuda_sync" (func $sync (result i32)))
  (memory (export "memory") 256)
  (global $buffer (mut i32) (i32.const 0))

  (func (export "setup") (param $size i32) (result i32)
    (local $handle i32)
    (local.set $handle (call $alloc (i64.extend_i32_u (local.get $size))))
    (if (i32.lt_s (local.get $handle) (i32.const 0)) (then (return (local.get $handle))))
    (global.set $buffer (local.get $handle))
    (i32.const 0))

  (func (export "h2d") (param $len i32) (result i32)
    (local $rc i32)
    (local.set $rc (call $write (global.get $buffer) (i64.const 0) (i32.const 0) (local.get $len)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (call $sync))

  (func (export "d2h") (param $len i32) (result i32)
    (call $read (global.get $buffer) (i64.const 0) (i32.const 0) (local.get $len)))

  (func (export "noop") (result i32) (i32.const 0)))
