//! Shared test fixtures: a private Dovecot (POP3, POP3S, IMAP, IMAPS) on 127.0.0.1.
#![allow(dead_code)]

pub mod dovecot;
pub mod moto;
pub mod oauth;
