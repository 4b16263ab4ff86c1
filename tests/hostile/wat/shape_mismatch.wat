;; expect: launch-rejected
;; `run` launches kernel 0 (add) on f32[2,3] + f32[4,5] -> f32[2,3]; operands are unwritten, so the host must check shapes before "written", in the contract's order.
;; message: shapes do not broadcast
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
  (func $f32x2 (param $d0 i32) (param $d1 i32) (result i32)
    (call $alloc (i32.const 1) (i32.const 2) (local.get $d0) (local.get $d1)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0)))
  (func (export "run") (param i32 i32) (result i32)
    (call $launch (i32.const 0)
      (call $f32x2 (i32.const 2) (i32.const 3))
      (call $f32x2 (i32.const 4) (i32.const 5))
      (call $f32x2 (i32.const 2) (i32.const 3))
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable))
