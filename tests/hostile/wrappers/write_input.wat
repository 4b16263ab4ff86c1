;; expect: read-only
;; `run` launches add writing into its own input (a tensor the caller owns and may share); inputs and globals are read-only.
;; signature: add
;; message: output 0 is read-only
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
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
    (call $launch (i32.const 0)
      (i32.load offset=4 (local.get $in)) (global.get $buf) (i32.load (local.get $in))
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable)
)
