//! A POP3 account, resolved from the config file or a URL on the command line: where to connect,
//! how to log in, and what to keep on the server. Holds no secret.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::AccountConfig;
use crate::net::url::{self, UrlError};
use crate::pop3::{AuthMethod, ConnectOptions, TlsMode};

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub user: String,
    pub connect: ConnectOptions,
    pub auth: AuthMethod,
    /// Delete from the server messages archived at least this many days ago (None: keep all).
    pub delete_after_days: Option<u32>,
    /// Run by `sh -c` for the password; the first line of its output is used.
    pub password_command: Option<String>,
    /// How long the password command may take.
    pub password_timeout: Duration,
    /// With a forward destination: only these messages (delivered there) may be deleted.
    pub delivered_only: Option<std::sync::Arc<std::collections::HashSet<crate::archive::Digest>>>,
}

impl Account {
    /// Whether `delete_after_days` may delete the archived message `id` (once due).
    pub fn may_delete(&self, id: &crate::archive::Digest) -> bool {
        self.delivered_only
            .as_ref()
            .is_none_or(|delivered| delivered.contains(id))
    }

    /// `pop3s://user@host:port` style, without any secret: for messages and the commit record.
    pub fn server_label(&self) -> String {
        let scheme = if self.connect.tls == TlsMode::Implicit {
            "pop3s"
        } else {
            "pop3"
        };
        format!(
            "{scheme}://{}@{}:{}",
            self.user, self.connect.host, self.connect.port
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(
        "{0:?} is not a POP3 server URL: write pop3s://USER@HOST[:PORT] or pop3://USER@HOST[:PORT]"
    )]
    BadUrl(String),
    #[error(transparent)]
    Url(UrlError),
    #[error("account {account}: {message}")]
    Invalid { account: String, message: String },
}

/// A POP3 server: `pop3s://user@host[:port]` (TLS from the first byte, port 995) or
/// `pop3://user@host[:port]` (STLS, port 110).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub implicit_tls: bool,
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl FromStr for ServerUrl {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url: url::ServerUrl = s.parse().map_err(|e| match e {
            UrlError::PasswordInUrl => AccountError::Url(e),
            UrlError::Malformed(_) => AccountError::BadUrl(s.to_string()),
        })?;
        let implicit_tls = match url.scheme.as_str() {
            "pop3s" | "pops" => true,
            "pop3" | "pop" => false,
            _ => return Err(AccountError::BadUrl(s.to_string())),
        };
        if !url.path.is_empty() {
            return Err(AccountError::BadUrl(s.to_string()));
        }
        Ok(ServerUrl {
            implicit_tls,
            user: url.user,
            host: url.host,
            port: url.port.unwrap_or(if implicit_tls { 995 } else { 110 }),
        })
    }
}

/// Command-line settings that override the config file's, for one run.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub tls: Option<String>,
    pub auth: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub tls_fingerprint: Option<String>,
    pub delete_after_days: Option<u32>,
    pub timeout: Option<Duration>,
}

pub fn parse_tls(value: &str) -> Result<TlsMode, String> {
    match value {
        "implicit" | "pop3s" => Ok(TlsMode::Implicit),
        "starttls" | "stls" => Ok(TlsMode::StartTls),
        "none" => Ok(TlsMode::None),
        other => Err(format!(
            "tls {other:?} is not one of implicit, starttls, none"
        )),
    }
}

/// A SHA-256 fingerprint as 64 hex digits, with or without `:` separators or a `sha256:` prefix.
pub fn parse_fingerprint(value: &str) -> Result<[u8; 32], String> {
    let value = value.trim();
    let hex = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &value[7..],
        _ => value,
    };
    let hex: String = hex.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex, &mut out)
        .map_err(|_| format!("{value:?} is not a SHA-256 fingerprint (64 hex digits)"))?;
    Ok(out)
}

impl Account {
    pub fn resolve(config: &AccountConfig, overrides: &Overrides) -> Result<Account, AccountError> {
        let invalid = |message: String| AccountError::Invalid {
            account: config.name.clone(),
            message,
        };
        let url: ServerUrl = config.server.parse()?;
        let tls_setting = overrides.tls.clone().or_else(|| config.tls.clone());
        let tls = match tls_setting {
            Some(t) => parse_tls(&t).map_err(invalid)?,
            None if url.implicit_tls => TlsMode::Implicit,
            None => TlsMode::StartTls,
        };
        let auth_setting = overrides.auth.clone().or_else(|| config.auth.clone());
        let auth = match auth_setting {
            Some(a) => a
                .parse::<AuthMethod>()
                .map_err(|e| invalid(e.to_string()))?,
            None => AuthMethod::Auto,
        };
        let fingerprint = match overrides
            .tls_fingerprint
            .clone()
            .or_else(|| config.tls_fingerprint.clone())
        {
            Some(f) => Some(parse_fingerprint(&f).map_err(invalid)?),
            None => None,
        };
        let mut connect = ConnectOptions::new(url.host, url.port, tls);
        connect.ca_file = overrides.ca_file.clone().or_else(|| config.ca_file.clone());
        connect.fingerprint = fingerprint;
        if let Some(t) = overrides.timeout {
            connect.timeout = t;
        }
        Ok(Account {
            name: config.name.clone(),
            user: url.user,
            connect,
            auth,
            delete_after_days: overrides.delete_after_days.or(config.delete_after_days),
            password_command: config.password_command.clone(),
            password_timeout: Duration::from_secs(config.password_command_timeout.unwrap_or(60)),
            delivered_only: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_with_defaults_and_at_signs_in_user_names() {
        let u: ServerUrl = "pop3s://alice%40example.com@mail.example.com"
            .parse()
            .unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.implicit_tls),
            ("alice@example.com", "mail.example.com", 995, true)
        );
        let u: ServerUrl = "pop3://bob@[::1]:1110/".parse().unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.implicit_tls),
            ("bob", "::1", 1110, false)
        );
        let u: ServerUrl = "pop3://me@x.org@pop.x.org".parse().unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str()),
            ("me@x.org", "pop.x.org")
        );
        for bad in [
            "imap://a@b",
            "pop3s://host-only",
            "pop3://a@b:notaport",
            "pop3://@b",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_accept_common_spellings() {
        let hex = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{colons}")).unwrap(),
            [0xab; 32]
        );
        assert!(parse_fingerprint("abcd").is_err());
    }
}
