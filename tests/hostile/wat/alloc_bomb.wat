;; expect: budget-exceeded
;; `run` allocs f32[4096,4096] (64 MiB) in an endless loop and never releases; the host tensor budget must stop it.
;; message: host tensor budget of 268435456 bytes exceeded
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
    (loop $more
      (drop
        (call $alloc (i32.const 1) (i32.const 2) (i32.const 4096) (i32.const 4096)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0)))
      (br $more))
    unreachable))
