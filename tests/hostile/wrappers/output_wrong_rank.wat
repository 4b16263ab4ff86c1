;; expect: contract
;; `run` returns a rank-2 view of its input for an output the signature declares rank 1: the caller must get what the signature promises.
;; signature: add
;; message: output `y` is f32[2, 2], the signature says
(module
  (import "ampoule:runtime/host@0.1.0" "view"
    (func $view (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
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
    (i32.store (i32.const 600)
      (call $view (i32.load (local.get $in)) (i32.const 2) (i32.const 2) (i32.const 2)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 1))
    (i32.const 512))
)
