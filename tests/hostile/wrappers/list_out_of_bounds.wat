;; expect: wasm
;; `run` returns ok with a list of 0x3fffffff handles at 0xfffff000: far outside its 64 KiB memory; lifting must bounds-check the list, not read host memory.
;; message: out of bounds
(module
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
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0xfffff000))
    (i32.store (i32.const 520) (i32.const 0x3fffffff))
    (i32.const 512))
)
