;; expect: compile
;; A valid component that imports the contract but exports neither `init` nor `run`: refused with a typed error when its entry is first prepared, not a panic on a missing export.
;; wit: worlds.wit no-exports
;; message: does not export the contract
(module
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
  (memory (export "memory") 1))
