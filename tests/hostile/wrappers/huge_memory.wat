;; expect: verify
;; Oversized memory declaration: the core module declares 65536 pages (4 GiB) of initial memory; refused at open, before anything is compiled or reserved.
;; message: declares a memory of 65536 pages
(module
  (memory (export "memory") 65536)
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
    unreachable)
)
