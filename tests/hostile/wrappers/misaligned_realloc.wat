;; expect: wasm
;; The guest's `cabi_realloc` returns an odd address for a list of u32 handles; the canonical ABI requires alignment and must refuse it.
;; signature: add
;; message: realloc
(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 1025))
  (global $buf (mut i32) (i32.const -1))
  (func (export "init") (param $g i32) (param $gn i32) (param $b i32) (param $bn i32)
    (global.set $buf (i32.load (local.get $b))))
  (func (export "run") (param i32 i32) (result i32)
    unreachable)
)
