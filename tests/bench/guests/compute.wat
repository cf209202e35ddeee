;; Compute kernels for the `compute` and `throughput` benchmark groups.
;; Semantics match guests/compute.c exactly (wrapping u64 / i32 arithmetic).
(module
  ;; acc = 0; for (i = 0; i < n; i++) acc = (acc ^ i) + 0x9E3779B97F4A7C15; return acc
  ;; A serial dependency chain: no closed form, nothing to vectorise or hoist.
  (func (export "loop") (param $n i64) (result i64)
    (local $i i64)
    (local $acc i64)
    (block $done
      (loop $top
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $acc
          (i64.add (i64.xor (local.get $acc) (local.get $i))
                   (i64.const 0x9E3779B97F4A7C15)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $top)))
    (local.get $acc))

  ;; Naive doubly recursive Fibonacci: a call-heavy kernel.
  (func $fib (export "fib") (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else
        (i32.add
          (call $fib (i32.sub (local.get $n) (i32.const 1)))
          (call $fib (i32.sub (local.get $n) (i32.const 2)))))))

  ;; The smallest calls, for the `throughput` group's sequential floor.
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
