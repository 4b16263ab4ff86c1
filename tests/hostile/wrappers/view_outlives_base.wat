;; expect: stale-handle
;; Use after free through a view: `run` views an f32[4], releases the viewed tensor, then launches on the view; the host must see that the view's base is gone.
;; message: outlived the tensor it views
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
  (import "ampoule:runtime/host@0.1.0" "alloc"
    (func $alloc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ampoule:runtime/host@0.1.0" "view"
    (func $view (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
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
    (local $a i32) (local $v i32) (local $out i32)
    (local.set $a (call $f32x1 (i32.const 4)))
    (local.set $v (call $view (local.get $a) (i32.const 1) (i32.const 4) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (local.set $out (call $f32x1 (i32.const 4)))
    (call $release (local.get $a))
    (call $launch (i32.const 0) (local.get $v) (local.get $v) (local.get $out)
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable)
)
