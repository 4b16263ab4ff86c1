;; expect: deadline
;; `run` loops forever without calling the host; only the epoch deadline can stop it.
;; message: ran past its deadline
(module
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
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
    unreachable))
