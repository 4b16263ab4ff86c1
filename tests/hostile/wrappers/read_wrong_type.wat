;; expect: contract
;; `read-i64` of an f32 input: reading a float tensor's bytes as an integer (type confusion at the boundary).
;; signature: add
;; message: read-i64 of a float tensor
(module
  (import "ampoule:runtime/host@0.1.0" "read-i64" (func $read_i64 (param i32 i32) (result i64)))
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
  (func (export "run") (param $in i32) (param $n i32) (result i32)
    (drop (call $read_i64 (i32.load (local.get $in)) (i32.const 0)))
    unreachable)
)
