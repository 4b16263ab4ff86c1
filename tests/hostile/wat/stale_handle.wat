;; expect: stale-handle
;; `run` allocs an f32[4], releases it, then asks `dim` of the released handle.
;; message: names a slot that was freed
(module
  (import "ampoule:runtime/host@0.1.0" "alloc"
    (func $alloc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
  (import "ampoule:runtime/host@0.1.0" "dim" (func $dim (param i32 i32) (result i32)))
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
    (local $h i32)
    (local.set $h
      (call $alloc (i32.const 1) (i32.const 1) (i32.const 4)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
        (i32.const 0) (i32.const 0) (i32.const 0)))
    (call $release (local.get $h))
    (drop (call $dim (local.get $h) (i32.const 0)))
    unreachable))
