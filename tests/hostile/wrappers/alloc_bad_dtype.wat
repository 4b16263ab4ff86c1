;; expect: contract
;; `alloc` with dtype code 99, which names no dtype: an unchecked enum from untrusted input (the safetensors/ONNX "unknown dtype" class).
;; message: unknown dtype code 99
(module
  (import "ampoule:runtime/host@0.1.0" "alloc"
    (func $alloc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
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
    (drop (call $alloc (i32.const 99) (i32.const 1) (i32.const 4) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    unreachable)
)
