;; A guest of the `tensorwasm:gpu/host@0.1.0` extension module (docs/ARCHITECTURE.md, "JIT
;; kernels and tensor ops"). Matrices live at fixed offsets of linear memory:
;; A (m x k) at 65536, B (k x n) right after A, C (m x n) right after B, all row-major f32.
;;
;;   run(m, n, k, offload, print) -> i32
;;     fills A[i] = (7i mod 13) - 6 and B[i] = (5i mod 11) - 5, then computes C = A @ B
;;     with the host's one-call `matmul` (offload = 1) or a plain wasm loop (offload = 0);
;;     print = 1 writes C's bytes to stdout. Returns 0 or the negative ABI code.
;;   relu(n) -> i32
;;     x[i] = (i mod 9) - 4 at 65536; asks the jit cache for a relu kernel (`jit_kernel`),
;;     launches it with `wasi_cuda_launch` over x -> y (right after x), syncs, writes y's
;;     bytes to stdout. Returns 0 or the negative ABI code.
(module
  (import "tensorwasm:gpu/host@0.1.0" "matmul"
    (func $matmul (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "tensorwasm:gpu/host@0.1.0" "jit_kernel"
    (func $jit_kernel (param i32 i32 i32 i32) (result i64)))
  (import "wasi:cuda/host@0.2.0" "wasi_cuda_launch"
    (func $launch (param i64 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi:cuda/host@0.2.0" "wasi_cuda_sync" (func $sync (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (data (i32.const 256) "relu")

  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 16) (local.get $ptr))
    (i32.store (i32.const 20) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32))))

  (func $fill (param $ptr i32) (param $count i32) (param $mul i32) (param $mod i32) (param $sub i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (f32.store
          (i32.add (local.get $ptr) (i32.shl (local.get $i) (i32.const 2)))
          (f32.convert_i32_s
            (i32.sub (i32.rem_u (i32.mul (local.get $i) (local.get $mul)) (local.get $mod))
                     (local.get $sub))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))

  (func $wasm_matmul (param $a i32) (param $b i32) (param $c i32)
                     (param $m i32) (param $n i32) (param $k i32)
    (local $i i32) (local $j i32) (local $p i32) (local $acc f32)
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $i) (local.get $m)))
        (local.set $j (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_u (local.get $j) (local.get $n)))
            (local.set $acc (f32.const 0))
            (local.set $p (i32.const 0))
            (block $dot_done
              (loop $dot
                (br_if $dot_done (i32.ge_u (local.get $p) (local.get $k)))
                (local.set $acc
                  (f32.add (local.get $acc)
                    (f32.mul
                      (f32.load (i32.add (local.get $a) (i32.shl
                        (i32.add (i32.mul (local.get $i) (local.get $k)) (local.get $p)) (i32.const 2))))
                      (f32.load (i32.add (local.get $b) (i32.shl
                        (i32.add (i32.mul (local.get $p) (local.get $n)) (local.get $j)) (i32.const 2)))))))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $dot)))
            (f32.store (i32.add (local.get $c) (i32.shl
              (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $j)) (i32.const 2)))
              (local.get $acc))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $cols)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $rows))))

  (func (export "run") (param $m i32) (param $n i32) (param $k i32)
                       (param $offload i32) (param $print i32) (result i32)
    (local $a i32) (local $b i32) (local $c i32) (local $code i32)
    (local.set $a (i32.const 65536))
    (local.set $b (i32.add (local.get $a) (i32.shl (i32.mul (local.get $m) (local.get $k)) (i32.const 2))))
    (local.set $c (i32.add (local.get $b) (i32.shl (i32.mul (local.get $k) (local.get $n)) (i32.const 2))))
    (call $fill (local.get $a) (i32.mul (local.get $m) (local.get $k)) (i32.const 7) (i32.const 13) (i32.const 6))
    (call $fill (local.get $b) (i32.mul (local.get $k) (local.get $n)) (i32.const 5) (i32.const 11) (i32.const 5))
    (if (local.get $offload)
      (then (local.set $code (call $matmul (local.get $a) (local.get $b) (local.get $c)
                                           (local.get $m) (local.get $n) (local.get $k))))
      (else (call $wasm_matmul (local.get $a) (local.get $b) (local.get $c)
                               (local.get $m) (local.get $n) (local.get $k))))
    (if (i32.and (local.get $print) (i32.eqz (local.get $code)))
      (then (call $print (local.get $c) (i32.shl (i32.mul (local.get $m) (local.get $n)) (i32.const 2)))))
    (local.get $code))

  (func (export "relu") (param $n i32) (result i32)
    (local $x i32) (local $y i32) (local $kernel i64) (local $code i32)
    (local.set $x (i32.const 65536))
    (local.set $y (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
    (call $fill (local.get $x) (local.get $n) (i32.const 1) (i32.const 9) (i32.const 4))
    (local.set $kernel (call $jit_kernel (i32.const 256) (i32.const 4) (i32.const 0) (i32.const 0)))
    (if (i64.lt_s (local.get $kernel) (i64.const 0))
      (then (return (i32.wrap_i64 (local.get $kernel)))))
    ;; argv at 512: ptr x, ptr y (tag 7, u32 offset, u32 length), u32 n (tag 5)
    (i32.store8 (i32.const 512) (i32.const 7))
    (i32.store (i32.const 513) (local.get $x))
    (i32.store (i32.const 517) (i32.shl (local.get $n) (i32.const 2)))
    (i32.store8 (i32.const 521) (i32.const 7))
    (i32.store (i32.const 522) (local.get $y))
    (i32.store (i32.const 526) (i32.shl (local.get $n) (i32.const 2)))
    (i32.store8 (i32.const 530) (i32.const 5))
    (i32.store (i32.const 531) (local.get $n))
    (local.set $code
      (call $launch (local.get $kernel)
        (i32.div_u (i32.add (local.get $n) (i32.const 127)) (i32.const 128)) (i32.const 1) (i32.const 1)
        (i32.const 128) (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 512) (i32.const 23)))
    (if (local.get $code) (then (return (local.get $code))))
    (local.set $code (call $sync))
    (if (local.get $code) (then (return (local.get $code))))
    (call $print (local.get $y) (i32.shl (local.get $n) (i32.const 2)))
    (i32.const 0))
)
