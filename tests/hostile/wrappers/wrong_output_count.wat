;; expect: contract
;; `run` returns ok with no outputs for a function whose signature has one: the host must not index outputs by the signature.
;; message: wrapper returned 0 outputs, the signature has 1
(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $bump
    local.set $p
    global.get $bump
    local.get 3
    i32.add
    global.set $bump
    local.get $p)
  (func (export "init") (param i32 i32 i32 i32))
  (func (export "run") (param i32 i32) (result i32)
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 0))
    (i32.const 512))
)
