//! popvault: a safe, verifiable copy of a POP3 mailbox.
pub mod account;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod config;
pub mod export;
pub mod import;
pub mod pop3;
pub mod probe;
pub mod repair;
pub mod restore;
pub mod transport;
