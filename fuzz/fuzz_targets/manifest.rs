//! Manifest parse and full verification: fuzzed `manifest.json` bytes with
//! the fixture package's real files (`fixtures/quickstart.ampoule`), opened
//! through `Host::open_files` (parse, digests, `verify_package`, global
//! resolution and guards). If the package opens, every function is called
//! once per entry with inputs matching its signature and that entry's
//! guards.
//!
//! Seeds are the fixture's manifest and variants of it, so most inputs keep
//! the real files' digests and reach verification and the sandbox.
//!
//! Failures: any panic (every outcome must be `Ok` or a typed
//! `ampoule_host::Error`); a call that succeeds with outputs that do not
//! match the function's signature.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ampoule_fuzz::open_and_exercise(data, ampoule_fuzz::fixture_files());
});
