;; expect: forbidden-import
;; WASI import: the component imports `wasi:cli/environment@0.2.0` (environment variables); a wrapper may import only the contract, so the host refuses it at open (no WASI is ever linked for package code).
;; wit: wasi.wit wasi-env
;; message: imports `wasi:cli/environment@0.2.0`
(module
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
  (import "wasi:cli/environment@0.2.0" "get-arguments" (func $args (param i32)))
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
    (call $args (i32.const 64))
    unreachable)
)
