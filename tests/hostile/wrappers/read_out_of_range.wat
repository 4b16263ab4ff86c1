;; expect: contract
;; `read-f64` of element 1000000 of a four-element input: an out-of-bounds read of host memory if the index were trusted.
;; signature: add
;; message: read of element 1000000 of a tensor with 4 elements
(module
  (import "ampoule:runtime/host@0.1.0" "read-f64" (func $read_f64 (param i32 i32) (result f64)))
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
    (drop (call $read_f64 (i32.load (local.get $in)) (i32.const 1000000)))
    unreachable)
)
