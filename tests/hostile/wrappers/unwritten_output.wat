;; expect: uninitialized-read
;; `run` returns a freshly alloc'd tensor nothing wrote: handing uninitialized host memory to the caller (an information leak if allocations were not zeroed).
;; message: was never written
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
  (func $f32x1 (param $n i32) (result i32)
    (call $alloc (i32.const 1) (i32.const 1) (local.get $n) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
  (func (export "run") (param i32 i32) (result i32)
    (i32.store (i32.const 600) (call $f32x1 (i32.const 4)))
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 1))
    (i32.const 512))
)
