;; The `invoke_stream` benchmark guest: `stream(n, size)` emits n chunks of `size` zero
;; bytes with `wasi:tensor` `emit_chunk` (each its own InvokeStream event) and returns 0, or
;; the first refusal's code (-1 no chunk channel, -2 over a cap, -3 the client went away).
;;
;; Memory: 0 .. 64 KiB the chunk (emit_chunk's per-chunk cap is 64 KiB).
(module
  (import "wasi:tensor/host@0.1.0" "emit_chunk" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (func (export "stream") (param $n i32) (param $size i32) (result i32)
    (local $k i32) (local $rc i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_s (local.get $k) (local.get $n)))
        (local.set $rc (call $emit (i32.const 0) (local.get $size)))
        (if (local.get $rc) (then (return (local.get $rc))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
