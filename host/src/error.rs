//! The host's error type. Callers match on variants; messages name the thing
//! and, where there is one, the fix.

use crate::guard::EntryMiss;

/// One problem found by verification, with where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `manifest`, `functions[0].entries[1].kernels[2]`, a file name...
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why a guest run was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// The call ran past its deadline.
    Deadline,
    /// A handle was out of range, of another instance, or never issued.
    BadHandle,
    /// A handle to a slot that was freed.
    StaleHandle,
    /// A launch did not match its kernel's signature or aliasing rules.
    LaunchRejected,
    /// A kernel refused its data (an index out of range...).
    KernelFailed,
    /// The guest asked for more host tensor bytes than its budget.
    BudgetExceeded,
    /// The guest read a tensor nothing had written.
    UninitializedRead,
    /// The guest tried to write a read-only tensor (an input or a global).
    ReadOnly,
    /// The guest broke the contract in another way (a bad dtype code, an
    /// output count that differs from the signature...).
    Contract,
    /// The guest's linear memory grew past its limit.
    GuestMemoryLimit,
    /// A Wasm trap in the guest itself (unreachable, stack overflow, ...).
    Wasm,
}

/// Everything that can go wrong opening a package or calling it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read package file `{file}`: {message}")]
    Io { file: String, message: String },

    #[error("package file `{file}` is corrupt or was tampered with: expected sha256 {expected}, got {actual}")]
    Integrity {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("package failed verification ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Verify(Vec<Problem>),

    #[error("package manifest format {found} is newer than this host supports ({supported}); upgrade ampoule")]
    FormatTooNew { found: u32, supported: u32 },

    #[error("package has no function `{name}`; it has: {available}")]
    UnknownFunction { name: String, available: String },

    #[error("global `{name}` must be bound by the application before the package can run (pass it in the bindings)")]
    MissingBinding { name: String },

    #[error("binding `{name}` does not name a host-bound global of this package; host-bound globals: {available}")]
    UnknownBinding { name: String, available: String },

    #[error("no entry of function `{function}` matches this call:\n  {}", miss_lines(.explanations))]
    GuardMiss {
        function: String,
        explanations: Vec<EntryMiss>,
    },

    #[error("function `{function}` expects {expected}, got {actual}")]
    BadInputs {
        function: String,
        expected: String,
        actual: String,
    },

    #[error("entry {entry} of function `{function}` missed at break {index}: a data-dependent guard did not hold")]
    BreakMiss {
        function: String,
        entry: usize,
        index: u32,
    },

    #[error("entry {entry} of function `{function}` was stopped ({kind:?}): {message}")]
    Trap {
        function: String,
        entry: usize,
        kind: TrapKind,
        message: String,
    },

    #[error("package is not signed, and this host's trust policy requires a signature: have it signed (`ampoule sign PKG --key KEY`) by a key the host trusts")]
    Unsigned,

    #[error("the package's signature by key {key} does not verify: the package was changed after it was signed, or signature.json is corrupt; get an intact copy, or have it re-signed")]
    BadSignature { key: String },

    #[error("package is signed only by keys this host does not trust ({}); if you trust the signer, add its public key to the trust policy (`--trust KEY.pub`)", .keys.join(", "))]
    UntrustedSigner { keys: Vec<String> },

    #[error("package file `signature.json` is malformed: {message}; have the package re-signed")]
    MalformedSignature { message: String },

    #[error("cannot compile wrapper `{wrapper}`: {message}")]
    Compile { wrapper: String, message: String },

    #[error("sandbox error: {0}")]
    Sandbox(String),
}

/// One line per entry that missed, or why there is none.
fn miss_lines(explanations: &[EntryMiss]) -> String {
    if explanations.is_empty() {
        return "the function has no entries yet; compile one (attach a compiler) or use a package that has one".into();
    }
    explanations
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl Error {
    /// The trap kind, if this is a trap.
    pub fn trap_kind(&self) -> Option<&TrapKind> {
        match self {
            Error::Trap { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
