//! The error type of the emitter. Every variant names the step that failed
//! and, where there is one, the fix.

use std::fmt;

use crate::verify::VerifyError;

/// A boxed error from `wit-parser` or `wit-component`, with its whole chain
/// of causes in its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a wrapper could not be emitted or componentized.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// Verification found problems in the program; all of them are listed.
    #[error("verify: the wrapper program is invalid: {}", Problems(problems))]
    Invalid { problems: Vec<VerifyError> },
    /// The program's memory areas do not fit a 32-bit memory. Verification's
    /// limits rule this out, so it signals a bug in the limits.
    #[error("layout: the program's registers and outputs do not fit a 32-bit memory")]
    Layout,
    /// A function body grew past the emitter's limit (emission stops there).
    #[error(
        "emit: the `{function}` body passes the limit of {limit} bytes; \
         the program has too many steps"
    )]
    FunctionTooLarge {
        function: &'static str,
        limit: usize,
    },
    /// A WIT source (the contract, or the extra world given to
    /// [`crate::componentize_with_wit`]) did not parse or has no such world.
    #[error("wit: {what}: {source:#}")]
    Wit {
        what: String,
        #[source]
        source: BoxError,
    },
    /// `wit-component` refused the core module: it imports or exports
    /// something the world does not describe, or with the wrong signature.
    #[error("componentize: the core module does not match world `{world}`: {source:#}")]
    Componentize {
        world: String,
        #[source]
        source: BoxError,
    },
}

/// Formats at most the first ten problems, then how many more there are.
struct Problems<'a>(&'a [VerifyError]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        for (i, p) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "; and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}
