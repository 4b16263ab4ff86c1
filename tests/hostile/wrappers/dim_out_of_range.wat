;; expect: contract
;; `dim` of axis 5 of a rank-1 input: a shape array indexed out of range.
;; signature: add
;; message: axis 5 out of range for rank 1
(module
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
  (func (export "run") (param $in i32) (param $n i32) (result i32)
    (drop (call $dim (i32.load (local.get $in)) (i32.const 5)))
    unreachable)
)
