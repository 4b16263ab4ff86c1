;; expect: verify
;; A valid component that imports the contract but exports neither `init` nor `run`: it can never run, so it is refused at open, before anything is compiled (as IREE resolves a module's interface at load), not at its first call.
;; wit: worlds.wit no-exports
;; message: does not export function `init`
;; message: does not export function `run`
(module
  (import "ampoule:runtime/host@0.1.0" "release" (func $release (param i32)))
  (memory (export "memory") 1))
