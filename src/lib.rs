//! popvault: a safe, verifiable copy of a POP3 mailbox.
pub mod archive;
pub mod cli;
pub mod config;
pub mod import;
