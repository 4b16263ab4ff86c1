;; expect: wasm
;; `run` recurses without end (not a tail call) until the Wasm stack overflows: a stack-overflow trap, never a host crash.
;; message: call stack exhausted
(module
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
  (func $down (param $n i32) (result i32)
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "run") (param i32 i32) (result i32)
    (drop (call $down (i32.const 0)))
    unreachable))
