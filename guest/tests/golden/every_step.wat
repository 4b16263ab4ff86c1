(module
  (type (;0;) (func (param i32 i32 i32 i32 i32 i32 i32)))
  (type (;1;) (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (type (;2;) (func (param i32)))
  (type (;3;) (func (param i32 i32) (result i32)))
  (type (;4;) (func (param i32 i32) (result i64)))
  (type (;5;) (func (param i32 i32) (result f64)))
  (type (;6;) (func (param i32 i32 i32 i32) (result i32)))
  (type (;7;) (func (param i32 i32 i32 i32)))
  (import "ampoule:runtime/host@0.1.0" "launch" (func (;0;) (type 0)))
  (import "ampoule:runtime/host@0.1.0" "alloc" (func (;1;) (type 1)))
  (import "ampoule:runtime/host@0.1.0" "view" (func (;2;) (type 1)))
  (import "ampoule:runtime/host@0.1.0" "release" (func (;3;) (type 2)))
  (import "ampoule:runtime/host@0.1.0" "dim" (func (;4;) (type 3)))
  (import "ampoule:runtime/host@0.1.0" "read-i64" (func (;5;) (type 4)))
  (import "ampoule:runtime/host@0.1.0" "read-f64" (func (;6;) (type 5)))
  (memory (;0;) 1 1)
  (global (;0;) (mut i32) i32.const 60)
  (global (;1;) (mut i32) i32.const 0)
  (export "memory" (memory 0))
  (export "cabi_realloc" (func 7))
  (export "init" (func 8))
  (export "run" (func 9))
  (func (;7;) (type 6) (param i32 i32 i32 i32) (result i32)
    (local i64 i64)
    local.get 0
    local.get 1
    i32.or
    local.get 2
    i32.popcnt
    i32.const 1
    i32.ne
    i32.or
    if ;; label = @1
      unreachable
    end
    global.get 0
    i64.extend_i32_u
    local.get 2
    i64.extend_i32_u
    i64.add
    i64.const 1
    i64.sub
    i64.const 0
    local.get 2
    i64.extend_i32_u
    i64.sub
    i64.and
    local.tee 4
    local.get 3
    i64.extend_i32_u
    i64.add
    local.tee 5
    i64.const 68
    i64.gt_u
    if ;; label = @1
      unreachable
    end
    local.get 5
    i32.wrap_i64
    global.set 0
    local.get 4
    i32.wrap_i64
  )
  (func (;8;) (type 7) (param i32 i32 i32 i32)
    global.get 1
    if ;; label = @1
      unreachable
    end
    i32.const 1
    global.set 1
    i32.const 36
    i32.const -1
    i32.const 24
    memory.fill
    local.get 1
    i32.const 1
    i32.ne
    if ;; label = @1
      unreachable
    end
    i32.const 36
    local.get 0
    i32.const 4
    memory.copy
    local.get 3
    i32.const 1
    i32.ne
    if ;; label = @1
      unreachable
    end
    i32.const 40
    local.get 2
    i32.const 4
    memory.copy
    i32.const 60
    global.set 0
    i32.const 0
    i32.const 0
    i32.load offset=40
    i32.const 1
    i32.const 4
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    call 2
    i32.store offset=48
  )
  (func (;9;) (type 3) (param i32 i32) (result i32)
    global.get 1
    i32.eqz
    if ;; label = @1
      unreachable
    end
    local.get 1
    i32.const 1
    i32.ne
    if ;; label = @1
      unreachable
    end
    i32.const 44
    local.get 0
    i32.const 4
    memory.copy
    i32.const 60
    global.set 0
    i32.const 0
    i32.load offset=44
    i32.const 0
    call 5
    i64.eqz
    if ;; label = @1
      i32.const 0
      i32.const 1
      i32.store8 offset=16
      i32.const 0
      i32.const 0
      i32.store offset=20
      i32.const 16
      return
    end
    i32.const 0
    i32.const 1
    i32.const 2
    i32.const 0
    i32.load offset=44
    i32.const 0
    call 4
    i32.const 3
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    i32.const 0
    call 1
    i32.store offset=52
    i32.const 0
    i32.load offset=36
    i32.const 0
    call 5
    i64.const 0
    i64.ne
    if ;; label = @1
      i32.const 0
      i32.const 0
      i32.load offset=44
      i32.const 0
      i32.load offset=48
      i32.const 0
      i32.load offset=52
      i32.const -1
      i32.const -1
      i32.const -1
      call 0
    else
      i32.const 0
      i32.const 0
      i32.load offset=52
      i32.store offset=56
    end
    i32.const 0
    i32.load offset=52
    call 3
    i32.const 0
    i32.const 0
    i32.load offset=56
    i32.store offset=32
    i32.const 0
    i32.const 0
    i32.store8 offset=16
    i32.const 0
    i32.const 32
    i32.store offset=20
    i32.const 0
    i32.const 1
    i32.store offset=24
    i32.const 16
  )
)
