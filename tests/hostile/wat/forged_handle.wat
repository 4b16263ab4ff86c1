;; expect: bad-handle
;; `run` launches kernel 0 on a handle the host never issued (0x00abcdef) in every operand.
;; message: handle 0x00abcdef was not issued by this instance
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
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
    (call $launch (i32.const 0)
      (i32.const 0x00abcdef) (i32.const 0x00abcdef) (i32.const 0x00abcdef)
      (i32.const -1) (i32.const -1) (i32.const -1))
    unreachable))
