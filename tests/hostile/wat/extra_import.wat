;; expect: forbidden-import
;; Imports `hostile:escape/fs@0.1.0#read-file`, outside the contract; the host must refuse the package at open.
;; wit: extra_import.wit hostile
;; message: imports `hostile:escape/fs@0.1.0`
(module
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
  (import "hostile:escape/fs@0.1.0" "read-file" (func $read_file (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "/etc/passwd")
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
    (call $read_file (i32.const 16) (i32.const 11) (i32.const 32))
    unreachable))
