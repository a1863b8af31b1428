//! `probe`: what a POP3 server offers (capabilities before and after login, TLS, certificate,
//! login methods, its LOGIN-DELAY and EXPIRE policies and, with a password, the mailbox size),
//! without changing anything. Used by `server-info` and `setup`.

use serde::Serialize;

use crate::account::Account;
use crate::net::tls::CertificateInfo;
use crate::pop3::{self, Capabilities, Expire, Pop3Error, Secret, Session};

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub server: String,
    pub greeting: String,
    /// CAPA before login.
    pub capabilities: Vec<String>,
    /// CAPA after login (servers often add UIDL, PIPELINING, or per-user EXPIRE and
    /// LOGIN-DELAY values then); `None` when not logged in.
    pub capabilities_after_login: Option<Vec<String>>,
    pub tls: Option<TlsSummary>,
    /// Login methods the server offers: USER, APOP, and SASL mechanisms.
    pub login_methods: Vec<String>,
    /// From the capabilities after login when known, else before.
    pub pipelining: bool,
    pub uidl: bool,
    /// Seconds the server wants between two logins (RFC 2449 §6.5).
    pub login_delay: Option<u64>,
    /// The server's own deletion of retrieved mail (RFC 2449 §6.7): "never", or days.
    pub expire: Option<String>,
    /// Present when a password was given and the login worked.
    pub mailbox: Option<MailboxSummary>,
    /// Why the login failed, when it was tried; what came before it is still reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_error: Option<String>,
    /// Where the server's policies contradict the account's, or deserve attention.
    pub warnings: Vec<String>,
    /// The error behind `login_error`, for the caller to give advice on.
    #[serde(skip)]
    pub login_failure: Option<std::sync::Arc<Pop3Error>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsSummary {
    pub version: String,
    pub cipher: String,
    /// The server's certificate (its `sha256` is the value `--tls-fingerprint` pins).
    #[serde(flatten)]
    pub certificate: CertificateInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailboxSummary {
    pub messages: u32,
    pub bytes: u64,
    pub uidl_supported: bool,
}

/// Connects as `account` says, reads what the server offers and, with `secret`, logs in for
/// the capabilities after login and the message count and size (STAT), then quits. Nothing is
/// fetched or deleted. A failed login is reported in [`ServerInfo::login_error`], with all
/// that was learned before it; only a failure to connect at all is an error.
pub fn probe(account: &Account, secret: Option<&Secret>) -> Result<ServerInfo, Pop3Error> {
    let session = Session::connect(&account.connect)?;
    let mut info = describe(account, &session);
    let Some(secret) = secret else {
        session.quit()?;
        return Ok(info);
    };
    let mut session = match session.login(&account.user, secret, account.auth) {
        Ok(session) => session,
        Err(e) => {
            info.login_error = Some(crate::error_chain(&e));
            info.login_failure = Some(std::sync::Arc::new(e));
            return Ok(info);
        }
    };
    let after = session.capabilities().cloned();
    let (messages, bytes) = session.stat()?;
    let uidl_supported = session.uidl_all_lenient()?.is_some();
    session.quit()?;
    if let Some(caps) = &after {
        info.capabilities_after_login = Some(caps.lines().collect());
        info.pipelining = caps.pipelining();
        info.uidl = caps.has("UIDL");
        note_policies(&mut info, caps, account);
    }
    info.mailbox = Some(MailboxSummary {
        messages,
        bytes,
        uidl_supported,
    });
    Ok(info)
}

/// What the greeting, the CAPA before login and the TLS handshake tell.
fn describe(account: &Account, session: &Session<pop3::Authorization>) -> ServerInfo {
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
    let tls = session.tls_info().map(|info| TlsSummary {
        version: info.protocol_version.clone(),
        cipher: info.cipher_suite.clone(),
        certificate: info.peer_certificates.first().map_or_else(
            || CertificateInfo::from_der(&[]),
            |der| CertificateInfo::from_der(der),
        ),
    });
    let mut info = ServerInfo {
        server: account.server_label(),
        greeting: session.greeting().text.clone(),
        capabilities: caps.lines().collect(),
        capabilities_after_login: None,
        tls,
        login_methods,
        pipelining: caps.pipelining(),
        uidl: caps.has("UIDL"),
        login_delay: None,
        expire: None,
        mailbox: None,
        login_error: None,
        warnings: Vec::new(),
        login_failure: None,
    };
    note_policies(&mut info, &caps, account);
    info
}

/// LOGIN-DELAY and EXPIRE, and where they contradict the account's `delete_after_days`. Called
/// again with the capabilities after login, whose values are the user's own.
fn note_policies(info: &mut ServerInfo, caps: &Capabilities, account: &Account) {
    info.warnings.clear();
    info.login_delay = caps.login_delay();
    info.expire = caps.expire().map(|e| match e {
        Expire::Never => "never".to_string(),
        Expire::Days(n) => format!("{n} days"),
    });
    if let Some(delay) = info.login_delay.filter(|d| *d >= 60) {
        info.warnings.push(format!(
            "the server allows one login every {delay} s (LOGIN-DELAY): schedule backups no more often; a dropped connection is retried only after that long"
        ));
    }
    let keep = account.delete_after_days.map(u64::from);
    match caps.expire() {
        Some(Expire::Days(0)) => info.warnings.push(
            "the server deletes every message a client retrieves, at the end of that session (EXPIRE 0): mail does not stay on the server after a backup, whatever delete_after_days says".into(),
        ),
        Some(Expire::Days(n)) => {
            if keep.is_some_and(|k| k > n) {
                info.warnings.push(format!(
                    "the server deletes retrieved messages after {n} days (EXPIRE {n}), sooner than this account's delete_after_days ({})",
                    keep.unwrap_or_default()
                ));
            }
            info.warnings.push(format!(
                "the server deletes a message {n} days after a client first retrieved it (EXPIRE {n}): mail read on another device is gone after that, so back up more often than every {n} days"
            ));
        }
        _ => {}
    }
}
