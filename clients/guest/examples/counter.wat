;; State that lives across calls of one instance: a counter, a buffer that grows, and
;; a start function that prints once.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 64) "started\n")
  (func $start
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (start $start)
  ;; Adds one to the counter and returns it.
  (func (export "inc") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  ;; Adds `n` to the counter and returns it.
  (func (export "add") (param $n i32) (result i32)
    (global.set $count (i32.add (global.get $count) (local.get $n)))
    (global.get $count))
  ;; Spins forever (for deadlines and terminate).
  (func (export "spin") (loop $l (br $l)))
  ;; Traps.
  (func (export "boom") unreachable)
)
