;; expect: bad-handle
;; A handle from another instance: `run` launches on its own f32[4] with the handle's instance tag (bits 24..32) changed, as a guest that learned another instance's handle would present it. Guests share no memory, so a forged tag is how such a handle arrives; the host checks ownership on every use (IREE re-checks every handle a shim receives).
;; message: was not issued by this instance
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
    (local $h i32)
    (local.set $h (call $f32x1 (i32.const 4)))
    (call $launch (i32.const 0)
      (i32.xor (local.get $h) (i32.const 0x01000000)) (local.get $h) (call $f32x1 (i32.const 4))
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable)
)
