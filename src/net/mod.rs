//! What the POP3 and IMAP clients share: connections ([`transport`], with the TLS trust rules
//! of [`tls`]), secrets that never print themselves ([`Secret`]), SASL encodings ([`sasl`]),
//! and the parsing of server URLs ([`url`]).

pub mod sasl;
pub mod tls;
pub mod transport;
pub mod url;

use std::fmt;

/// A password or OAuth token. It never shows its content through `Debug` and has no `Display`,
/// so it cannot leak into an error message or a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
