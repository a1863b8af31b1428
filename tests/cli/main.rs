//! CLI integration tests: the real binary on real files, asserting on output, exit codes and bytes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../common/mod.rs"]
mod common;

mod archive_corpus;
mod archive_crash;
mod archive_damage;
mod backup_dovecot;
mod backup_faults;
mod consistency;
mod docs;
mod encryption;
mod export;
mod fake_imap;
mod fake_pop3;
mod faults;
mod forward;
mod oauth;
mod pop3_providers;
mod repair;
mod restore;
mod s3;
mod search;
mod signals;
mod support;
mod thunderbird;
mod tls_trust;
