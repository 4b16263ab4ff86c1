;; expect: wasm
;; Re-entering after a trap: the first `run` on an instance sets a flag and traps; a `run` on an instance that saw the flag would return err(7) (a break miss). The host discards trapped instances, so every call traps the same way and never sees the poisoned state.
;; message: unreachable
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
  (global $poisoned (mut i32) (i32.const 0))
  (func (export "run") (param i32 i32) (result i32)
    (if (global.get $poisoned)
      (then
        (i32.store8 (i32.const 512) (i32.const 1))
        (i32.store (i32.const 516) (i32.const 7))
        (return (i32.const 512))))
    (global.set $poisoned (i32.const 1))
    unreachable)
)
