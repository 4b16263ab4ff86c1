;; expect: guest-memory-limit
;; The `guest_memory_bytes` limit at run time: `run` grows its memory one page at a time under a host whose limit is 1 MiB.
;; limits: guest_memory_bytes=1048576
;; message: the limit is 1048576
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
    (loop $more
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then unreachable))
      (br $more))
    unreachable)
)
