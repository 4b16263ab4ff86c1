;; expect: budget-exceeded
;; Handle-table exhaustion: `run` allocs zero-byte f32[0] tensors forever (no bytes, so no tensor budget applies); the per-instance slot limit (here 64, via limits) must stop it.
;; limits: max_slots=64
;; message: instance holds 64 slots, the limit
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
    (loop $more
      (drop (call $f32x1 (i32.const 0)))
      (br $more))
    unreachable)
)
