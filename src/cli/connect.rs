//! The connection flags POP3 commands share (backup, server-info, setup).

use std::time::Duration;

use clap::Args;

use crate::account::Overrides;

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// TLS: implicit (pop3s), starttls, or none.
    #[arg(long, value_name = "MODE")]
    pub tls: Option<String>,
    /// Login method: auto, user, apop, plain, cram-md5, login, xoauth2, oauthbearer (auto tries
    /// what the server offers, strongest first, and goes on to the next after a refusal).
    #[arg(long, value_name = "METHOD")]
    pub auth: Option<String>,
    /// Trust only the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    pub tls_fingerprint: Option<String>,
}

impl ConnectArgs {
    pub fn overrides(&self, timeout: Duration, delete_after_days: Option<u32>) -> Overrides {
        Overrides {
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            ca_file: self.ca_file.clone(),
            tls_fingerprint: self.tls_fingerprint.clone(),
            delete_after_days,
            timeout: Some(timeout),
        }
    }
}
