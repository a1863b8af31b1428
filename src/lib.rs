//! popvault: a safe, verifiable copy of a POP3 mailbox.
pub mod pop3;
