;; expect: stale-handle
;; Use after free across calls: the first `run` adds its inputs correctly but keeps input 0's handle in a Wasm global; the second `run` (same pooled instance) asks `dim` of it. Inputs are freed when `run` returns, so the kept handle must be stale.
;; signature: add
;; warmup: 1
;; message: names a slot that was freed
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
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
  (global $buf (mut i32) (i32.const -1))
  (func (export "init") (param $g i32) (param $gn i32) (param $b i32) (param $bn i32)
    (global.set $buf (i32.load (local.get $b))))
  (global $kept (mut i32) (i32.const -1))
  (func (export "run") (param $in i32) (param $n i32) (result i32)
    (if (i32.ne (global.get $kept) (i32.const -1))
      (then
        (drop (call $dim (global.get $kept) (i32.const 0)))
        unreachable))
    (global.set $kept (i32.load (local.get $in)))
    (call $launch (i32.const 0)
      (i32.load (local.get $in)) (i32.load offset=4 (local.get $in)) (global.get $buf)
      (i32.const -1) (i32.const -1) (i32.const -1))
    ;; ok([buf]): discriminant 0 at 512, list (ptr 600, len 1) at 516.
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 1))
    (i32.store (i32.const 600) (global.get $buf))
    (i32.const 512))
)
