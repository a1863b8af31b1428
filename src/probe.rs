//! `probe`: what a POP3 server offers (capabilities, TLS, certificate, login methods and, with a
//! password, the mailbox size), without changing anything. Used by `server-info` and `setup`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::account::Account;
use crate::pop3::{AuthMethod, Pop3Error, Secret, Session};

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub server: String,
    pub greeting: String,
    pub capabilities: Vec<String>,
    pub tls: Option<TlsSummary>,
    /// Login methods the server offers: USER, APOP, and SASL mechanisms.
    pub login_methods: Vec<String>,
    pub pipelining: bool,
    pub uidl: bool,
    /// Present when a password was given.
    pub mailbox: Option<MailboxSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsSummary {
    pub version: String,
    pub cipher: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// SHA-256 of the server certificate, the value `--tls-fingerprint` pins.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailboxSummary {
    pub messages: u32,
    pub bytes: u64,
    pub uidl_supported: bool,
}

/// Connects as `account` says, reads what the server offers and, with `secret`, logs in for
/// the message count and size (STAT) and quits. Nothing is fetched or deleted.
pub fn probe(account: &Account, secret: Option<&Secret>) -> Result<ServerInfo, Pop3Error> {
    let session = Session::connect(&account.connect)?;
    let caps = session.capabilities().cloned().unwrap_or_default();
    let mut login_methods = Vec::new();
    if caps.has("USER") {
        login_methods.push("USER".to_string());
    }
    if session.apop_timestamp().is_some() {
        login_methods.push("APOP".to_string());
    }
    login_methods.extend(
        caps.sasl_mechanisms()
            .into_iter()
            .map(|m| format!("SASL {m}")),
    );
    let tls = session.tls_info().map(|info| {
        let leaf = info.peer_certificates.first();
        let parsed = leaf
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, c)| c);
        TlsSummary {
            version: info.protocol_version.clone(),
            cipher: info.cipher_suite.clone(),
            subject: parsed
                .as_ref()
                .map(|c| c.subject().to_string())
                .unwrap_or_default(),
            issuer: parsed
                .as_ref()
                .map(|c| c.issuer().to_string())
                .unwrap_or_default(),
            not_before: parsed
                .as_ref()
                .and_then(|c| DateTime::from_timestamp(c.validity().not_before.timestamp(), 0)),
            not_after: parsed
                .as_ref()
                .and_then(|c| DateTime::from_timestamp(c.validity().not_after.timestamp(), 0)),
            sha256: info.leaf_fingerprint().map(hex::encode).unwrap_or_default(),
        }
    });
    let mut info = ServerInfo {
        server: account.server_label(),
        greeting: session.greeting().text.clone(),
        capabilities: caps.lines().collect(),
        tls,
        login_methods,
        pipelining: caps.has("PIPELINING"),
        uidl: caps.has("UIDL"),
        mailbox: None,
    };
    match secret {
        None => session.quit()?,
        Some(secret) => {
            let method = if account.auth == AuthMethod::Auto {
                AuthMethod::Auto
            } else {
                account.auth
            };
            let mut session = session.login(&account.user, secret, method)?;
            let (messages, bytes) = session.stat()?;
            let uidl_supported = session.uidl_all()?.is_some();
            session.quit()?;
            info.mailbox = Some(MailboxSummary {
                messages,
                bytes,
                uidl_supported,
            });
        }
    }
    Ok(info)
}
