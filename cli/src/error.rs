//! Usage errors: the operator asked for something that cannot be done (exit 2).

/// A usage or validation error: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a usage error (exit 2) from the enclosing function.
macro_rules! usage {
    ($($t:tt)*) => { return Err(anyhow::Error::new($crate::error::UsageError(format!($($t)*)))) };
}
pub(crate) use usage;
