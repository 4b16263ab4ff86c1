;; expect: verify
;; Huge table: the core module declares a funcref table of 100000 elements (wasmtime's pooling allocator and every engine cap tables); refused at open.
;; message: declares a table of 100000 elements
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
  (table 100000 funcref)
  (func (export "run") (param i32 i32) (result i32)
    unreachable)
)
