;; expect: guest-memory-limit
;; `run` grows a one-element table by 100000 elements: the host's limiter refuses tables past 1024 elements.
;; message: guest table would grow
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
  (table $t 1 funcref)
  (func (export "run") (param i32 i32) (result i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 100000)) (i32.const -1))
      (then unreachable))
    unreachable)
)
