//! POP3 client (RFC 1939, 2449, 2595, 5034): a sans-IO codec and a blocking session over TCP or TLS.
//!
//! Layers, bottom up:
//! - [`codec`] turns commands into bytes and parses replies out of a byte buffer; it never
//!   touches a socket, so every parser is unit-tested on byte literals.
//! - [`auth`] computes APOP digests and SASL responses (PLAIN, CRAM-MD5, LOGIN, XOAUTH2,
//!   OAUTHBEARER), and the order in which `auto` tries them.
//! - [`crate::net`] opens TCP, implicit TLS or STLS connections with rustls (ring provider),
//!   and holds what IMAP shares: secrets, SASL encodings, server URLs.
//! - [`session`] drives one connection: `Session<Authorization>` becomes
//!   `Session<Transaction>` only through a successful login; `conn` holds its buffers, the
//!   pipeline of commands in flight, and the bounds on waiting (timeout, stall, stop).

pub mod auth;
pub mod codec;
mod conn;
pub mod session;

use std::io;

pub use crate::net::Secret;
pub use crate::net::transport::{ConnectOptions, TlsInfo, TlsMode, TransportError};
pub use auth::AuthMethod;
pub use codec::{Capabilities, Expire, Reply, RespCode, Status};
pub use conn::STOP_GRACE;
pub use session::{
    Authorization, Refused, RetrieveError, Session, Transaction, UidlListing, UidlWarning,
    connect_and_login,
};

/// Everything that can go wrong talking POP3. No variant ever holds a password or a token:
/// `Rejected::command` is only the verb (`PASS`, `AUTH`), never its arguments.
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error(transparent)]
    Transport(TransportError),
    #[error("server does not advertise STLS; refusing to continue without TLS")]
    NoStls,
    /// A `-ERR` reply. `code` is its RFC 2449/3206 response code, which says whether trying
    /// again can help (see [`Pop3Error::retry`]).
    #[error("{}server rejected {command}: {reply}", meaning(.code.as_ref()))]
    Rejected {
        command: &'static str,
        reply: String,
        code: Option<RespCode>,
    },
    #[error("authentication method {method} not available: {reason}")]
    MethodUnavailable {
        method: &'static str,
        reason: String,
    },
    #[error("protocol error: {what}")]
    Protocol { what: String },
    #[error("server sent a line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("it runs past {limit} bytes although LIST said {listed} (a broken server)")]
    Overrun { msgno: u32, listed: u64, limit: u64 },
    #[error("message {msgno} has an unusable unique-id: {reason}")]
    InvalidUid { msgno: u32, reason: String },
    #[error("invalid argument: {what}")]
    InvalidArgument { what: String },
    #[error("timed out waiting for the server")]
    Timeout,
    #[error(
        "the server did not answer the login in {seconds} s (a server that allows one session per mailbox makes a login wait while another client is connected)"
    )]
    LoginTimeout { seconds: u64 },
    #[error("the server stalled: fewer than {min_bytes} bytes in {seconds} s")]
    Stalled { min_bytes: usize, seconds: u64 },
    #[error("stopped by a signal")]
    Cancelled,
    #[error("connection closed by the server")]
    Closed,
    #[error("connection unusable after an earlier error")]
    Unusable,
    #[error("i/o error on the connection")]
    Io(#[source] io::Error),
}

impl Pop3Error {
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        Pop3Error::Protocol { what: what.into() }
    }

    /// The response code of a refusal, if any.
    pub fn code(&self) -> Option<&RespCode> {
        match self {
            Pop3Error::Rejected { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// Whether connecting again later can help, and how soon.
    pub fn retry(&self) -> Retry {
        match self {
            Pop3Error::Closed
            | Pop3Error::Timeout
            | Pop3Error::LoginTimeout { .. }
            | Pop3Error::Stalled { .. }
            | Pop3Error::Io(_)
            | Pop3Error::Overrun { .. }
            | Pop3Error::Transport(TransportError::Connect { .. }) => Retry::Reconnect,
            Pop3Error::Rejected { code, .. } => match code {
                Some(RespCode::InUse) => Retry::MailboxInUse,
                Some(RespCode::LoginDelay) => Retry::LoginDelay,
                Some(RespCode::SysTemp) => Retry::Reconnect,
                _ => Retry::Never,
            },
            _ => Retry::Never,
        }
    }
}

/// What a caller may do after an error (see [`Pop3Error::retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The connection failed or the server had a temporary failure: connect again.
    Reconnect,
    /// `[IN-USE]`: another session holds the maildrop; wait for it to end.
    MailboxInUse,
    /// `[LOGIN-DELAY]`: logged in again too soon; wait the server's LOGIN-DELAY.
    LoginDelay,
    /// Wrong credentials, a permanent server failure, a local error: trying again cannot help.
    Never,
}

/// What a response code means to the user, as a prefix of the refusal.
fn meaning(code: Option<&RespCode>) -> &'static str {
    match code {
        Some(RespCode::Auth) => {
            "the server refused the login (wrong user name or password?), not retried: "
        }
        Some(RespCode::InUse) => {
            "the mailbox is locked by another session (another POP client still connected?); the password is fine: "
        }
        Some(RespCode::LoginDelay) => "logged in again too soon for the server (LOGIN-DELAY): ",
        Some(RespCode::SysTemp) => "a temporary server failure: ",
        Some(RespCode::SysPerm) => "a permanent server failure (not retried; ask the provider): ",
        _ => "",
    }
}

/// Connection failures keep their own variants, except that a timeout or a dropped connection
/// during the TLS handshake is the same `Timeout` or `Closed` as anywhere else.
impl From<TransportError> for Pop3Error {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Io(io) => io.into(),
            other => Pop3Error::Transport(other),
        }
    }
}

/// Socket errors are sorted into the cases a caller acts on: a timeout, a dropped connection,
/// or anything else.
impl From<io::Error> for Pop3Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Pop3Error::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Pop3Error::Closed,
            _ => Pop3Error::Io(e),
        }
    }
}

pub type Result<T, E = Pop3Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_resets_are_classified() {
        let t: Pop3Error = io::Error::from(io::ErrorKind::WouldBlock).into();
        assert!(matches!(t, Pop3Error::Timeout));
        let c: Pop3Error = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert!(matches!(c, Pop3Error::Closed));
    }
}
