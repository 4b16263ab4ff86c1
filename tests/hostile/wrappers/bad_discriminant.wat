;; expect: wasm
;; `run` returns a result whose discriminant is 7 (neither ok nor err): the canonical ABI's lifting must reject it, not read an arbitrary payload.
;; message: invalid
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
    (i32.store8 (i32.const 512) (i32.const 7))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 1))
    (i32.const 512))
)
