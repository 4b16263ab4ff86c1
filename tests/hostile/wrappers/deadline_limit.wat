;; expect: deadline
;; The `deadline` limit: `run` spins forever under a host whose deadline is 20 ms; the call must stop at about that deadline (the runner bounds how long it took).
;; limits: deadline_ms=20
;; message: ran past its deadline
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
    (loop $spin (br $spin))
    unreachable)
)
