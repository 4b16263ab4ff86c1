;; expect: guest-memory-limit
;; `run` grows its memory (declared with no maximum) by 16 MiB at a time forever; the host's limiter must trap the grow that passes the limit (a refused grow returning -1 hits `unreachable` instead).
;; message: guest memory would grow to
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
    (loop $more
      (if (i32.eq (memory.grow (i32.const 256)) (i32.const -1))
        (then unreachable))
      (br $more))
    unreachable))
