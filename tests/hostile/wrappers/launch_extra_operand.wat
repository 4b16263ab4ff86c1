;; expect: launch-rejected
;; `launch` passes a fourth operand to a three-operand kernel: arity is checked, operands past it must be the no-slot marker.
;; message: takes 3 operands but operand 3 is set
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
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
  (func $f32x1 (param $n i32) (result i32)
    (call $alloc (i32.const 1) (i32.const 1) (local.get $n) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
  (func (export "run") (param i32 i32) (result i32)
    (call $launch (i32.const 0)
      (call $f32x1 (i32.const 4)) (call $f32x1 (i32.const 4)) (call $f32x1 (i32.const 4))
      (call $f32x1 (i32.const 4)) (i32.const -1) (i32.const -1))
    unreachable)
)
