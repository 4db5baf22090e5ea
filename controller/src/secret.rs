//! Secrets (tokens, webhook keys) in a wrapper that never prints them.

/// A non-empty secret value. `Debug` and `Display` print `***`; only [`Secret::expose`]
/// gives the value, so a secret cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A secret was configured but is empty.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is empty; an empty secret would accept anything (remove the setting, or give it a value)"
)]
pub struct EmptySecret(pub String);

impl Secret {
    /// Wrap `value` (surrounding whitespace, e.g. the newline of a mounted file, is
    /// trimmed). `what` names the setting in the error.
    ///
    /// # Errors
    /// [`EmptySecret`] when nothing is left.
    pub fn new(what: &str, value: &str) -> Result<Secret, EmptySecret> {
        let v = value.trim();
        if v.is_empty() {
            return Err(EmptySecret(what.to_string()));
        }
        Ok(Secret(v.to_string()))
    }

    /// The value itself; use it only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_secrets_are_refused_and_values_never_print() {
        assert!(Secret::new("--x", "").is_err());
        assert!(Secret::new("--x", " \n").is_err());
        let s = Secret::new("--x", "hunter2\n").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
