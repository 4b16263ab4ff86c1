;; expect: bad-handle
;; A forged handle with this instance's own tag and generation but a slot index (4000) that was never allocated: an index-out-of-range on the host's slot table (the ONNX Runtime / ExecuTorch class of unchecked tensor indices).
;; message: names slot 4000, which does not exist
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
      (local.get $h) (local.get $h)
      (i32.or (i32.and (local.get $h) (i32.const 0xfffff000)) (i32.const 4000))
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable)
)
