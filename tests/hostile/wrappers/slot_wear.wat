;; expect: ok
;; A legitimate, long-lived pooled instance that churns slots: every `run` allocs and releases a tensor 4096 times (so one slot's generation wraps and the slot retires) and then adds its inputs. Under a 64-slot limit it would run out of slots after about 60 calls if retired slots piled up; the host must replace a worn-out instance instead of failing the call.
;; signature: add
;; limits: max_slots=64
;; warmup: 80
(module
  (import "ampoule:runtime/host@0.1.0" "launch"
    (func $launch (param i32 i32 i32 i32 i32 i32 i32)))
  (import "ampoule:runtime/host@0.1.0" "alloc"
    (func $alloc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
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
  (func (export "run") (param $in i32) (param $n i32) (result i32)
    (local $i i32)
    (loop $churn
      (call $release
        (call $alloc (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $churn (i32.lt_u (local.get $i) (i32.const 4096))))
    (call $launch (i32.const 0)
      (i32.load (local.get $in)) (i32.load offset=4 (local.get $in)) (global.get $buf)
      (i32.const -1) (i32.const -1) (i32.const -1))
    ;; ok([buf]): discriminant 0 at 512, list (ptr 600, len 1) at 516.
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 600))
    (i32.store (i32.const 520) (i32.const 1))
    (i32.store (i32.const 600) (global.get $buf))
    (i32.const 512)))
