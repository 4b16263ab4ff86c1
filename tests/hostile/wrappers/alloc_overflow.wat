;; expect: budget-exceeded
;; `alloc` of an f64 tensor with eight dims of 0xffffffff: the element count overflows usize (the safetensors/ExecuTorch "element count overflows" class); checked arithmetic must refuse it, not wrap to a small buffer.
;; message: overflows
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
    (drop (call $alloc (i32.const 2) (i32.const 8) (i32.const -1) (i32.const -1)
      (i32.const -1) (i32.const -1) (i32.const -1) (i32.const -1) (i32.const -1) (i32.const -1)))
    unreachable)
)
