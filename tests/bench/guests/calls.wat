;; Trivial exports for the `call_export` group: the call path, not the guest, is measured.
(module
  (func (export "noop"))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
