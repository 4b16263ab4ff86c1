;; expect: launch-rejected
;; A launch whose output is smaller than the kernel writes (f32[4] + f32[4] -> f32[2]): the classic out-of-bounds write of a kernel trusting its caller's buffer sizes.
;; message: output 0 is f32[2], the kernel produces f32[4]
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
      (call $f32x1 (i32.const 4)) (call $f32x1 (i32.const 4)) (call $f32x1 (i32.const 2))
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable)
)
