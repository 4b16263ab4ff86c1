;; expect: uninitialized-read
;; `run` allocs an i64[1] and reads element 0 with `read-i64` before anything wrote it.
;; message: which nothing wrote
(module
  (import "ampoule:runtime/host@0.1.0" "alloc"
    (func $alloc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ampoule:runtime/host@0.1.0" "read-i64"
    (func $read_i64 (param i32 i32) (result i64)))
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
    (drop
      (call $read_i64
        (call $alloc (i32.const 6) (i32.const 1) (i32.const 1)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0))
        (i32.const 0)))
    unreachable))
