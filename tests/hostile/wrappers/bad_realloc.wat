;; expect: wasm
;; The guest's `cabi_realloc` answers the host's request for room for `init`'s buffer list with a pointer past the end of memory; lowering must bounds-check it (wasmtime's canonical-ABI realloc checks).
;; signature: add
;; message: realloc
(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 0x7ffffff0))
  (global $buf (mut i32) (i32.const -1))
  (func (export "init") (param $g i32) (param $gn i32) (param $b i32) (param $bn i32)
    (global.set $buf (i32.load (local.get $b))))
  (func (export "run") (param i32 i32) (result i32)
    unreachable)
)
