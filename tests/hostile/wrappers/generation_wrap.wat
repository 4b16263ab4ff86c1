;; expect: stale-handle
;; Handle ABA: `run` keeps the handle of a released f32[4], then allocs and releases the same slot until its 12-bit generation wraps back to the kept handle's, allocs once more and asks `dim` of the old handle; a stale handle must never name a newer tensor (generational-arena wrap-around).
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
  (func $f32x1 (param $n i32) (result i32)
    (call $alloc (i32.const 1) (i32.const 1) (local.get $n) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
  (func (export "run") (param i32 i32) (result i32)
    (local $old i32) (local $i i32)
    (local.set $old (call $f32x1 (i32.const 4)))
    (call $release (local.get $old))
    (loop $again
      (call $release (call $f32x1 (i32.const 4)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 4095))))
    (drop (call $f32x1 (i32.const 4)))
    (drop (call $dim (local.get $old) (i32.const 0)))
    unreachable)
)
