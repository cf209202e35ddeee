;; An unmodified f32 matmul in plain wasm, declared for auto-offload. Deployed with
;; `tensorwasm deploy --offload` (FunctionConfig.auto_offload) and a module that carries
;; the `tensorwasm.offload` custom section
;;   {"matmul": {"op": "matmul", "args": ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]},
;;    "matmul_kmn": {"op": "matmul", "args": ["k", "m", "n", "a_ptr", "b_ptr", "c_ptr"]}}
;; a call to `matmul` or `matmul_kmn` runs on the GPU (dispatcher) instead of the loop
;; below; without the section or the flag the loop runs. The section is added after
;; assembly (wat2wasm has no custom-section syntax here): see tests/integration/
;; test_jit_offload.py, or `wasm-tools`/binaryen, or cuda.h's TENSORWASM_OFFLOAD in C.
;; It imports nothing from the GPU modules: offload needs no guest code.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 64)

  ;; fill(a, b, m, n, k): A[i] = (7i mod 13) - 6 (m x k), B[i] = (5i mod 11) - 5 (k x n).
  (func (export "fill") (param $a i32) (param $b i32) (param $m i32) (param $n i32)
    (param $k i32)
    (local $i i32)
    (local.set $i (i32.const 0))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.mul (local.get $m) (local.get $k))))
      (f32.store (i32.add (local.get $a) (i32.shl (local.get $i) (i32.const 2)))
        (f32.convert_i32_s (i32.sub
          (i32.rem_u (i32.mul (local.get $i) (i32.const 7)) (i32.const 13)) (i32.const 6))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.set $i (i32.const 0))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.mul (local.get $k) (local.get $n))))
      (f32.store (i32.add (local.get $b) (i32.shl (local.get $i) (i32.const 2)))
        (f32.convert_i32_s (i32.sub
          (i32.rem_u (i32.mul (local.get $i) (i32.const 5)) (i32.const 11)) (i32.const 5))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))

  ;; matmul(a, b, c, m, n, k) -> 0: C[m x n] = A[m x k] @ B[k x n], the naive loop.
  (func $matmul (export "matmul") (param $a i32) (param $b i32) (param $c i32)
    (param $m i32) (param $n i32) (param $k i32) (result i32)
    (local $i i32) (local $j i32) (local $p i32) (local $acc f32)
    (local.set $i (i32.const 0))
    (block $rows_done (loop $rows
      (br_if $rows_done (i32.ge_u (local.get $i) (local.get $m)))
      (local.set $j (i32.const 0))
      (block $cols_done (loop $cols
        (br_if $cols_done (i32.ge_u (local.get $j) (local.get $n)))
        (local.set $acc (f32.const 0))
        (local.set $p (i32.const 0))
        (block $dot_done (loop $dot
          (br_if $dot_done (i32.ge_u (local.get $p) (local.get $k)))
          (local.set $acc (f32.add (local.get $acc) (f32.mul
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
      (br $rows)))
    (i32.const 0))

  ;; The same op with its arguments in another order and no result.
  (func (export "matmul_kmn") (param $k i32) (param $m i32) (param $n i32) (param $a i32)
    (param $b i32) (param $c i32)
    (drop (call $matmul (local.get $a) (local.get $b) (local.get $c) (local.get $m)
      (local.get $n) (local.get $k))))

  ;; dump(ptr, len) -> errno: writes memory [ptr, ptr + len) to stdout (iovec at 0).
  (func (export "dump") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
