;; The flooding tenant's guests for the `isolation` group: each writes a line first (so its
;; caller sees that it runs), then either spins or writes 4 KiB to stdout in a loop, until its
;; deadline stops it. `add` is the light tenant's call.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "started\n")
  ;; Writes [ptr, ptr+len) to stdout with one fd_write (iovec at 0, nwritten at 8).
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "spin")
    (call $write (i32.const 100) (i32.const 8))
    (loop $forever (br $forever)))
  (func (export "flood")
    (call $write (i32.const 100) (i32.const 8))
    (loop $forever
      (call $write (i32.const 4096) (i32.const 4096))
      (br $forever)))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
