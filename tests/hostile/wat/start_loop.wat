;; expect: deadline
;; The core module's start function loops forever, so instantiation itself never ends; the host must put a deadline on instantiation too (or refuse modules with a start function).
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
  (func $spin (loop $again (br $again)))
  (start $spin)
  (func (export "run") (param i32 i32) (result i32)
    unreachable))
