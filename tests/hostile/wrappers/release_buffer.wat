;; expect: contract
;; Double free / freeing memory it does not own: `run` releases the planned buffer the host handed to `init`; only slots the guest created may be released.
;; signature: add
;; message: cannot be released
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
  (global $buf (mut i32) (i32.const -1))
  (func (export "init") (param $g i32) (param $gn i32) (param $b i32) (param $bn i32)
    (global.set $buf (i32.load (local.get $b))))
  (func (export "run") (param i32 i32) (result i32)
    (call $release (global.get $buf))
    unreachable)
)
