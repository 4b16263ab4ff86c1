;; expect: verify
;; The `guest_memory_bytes` limit at open: 32 pages (2 MiB) of initial memory under a host whose guest memory limit is 1 MiB (16 pages).
;; limits: guest_memory_bytes=1048576
;; message: the limit is 16 pages
(module
  (memory (export "memory") 32)
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
