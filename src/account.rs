//! A POP3 account, resolved from the config file or a URL on the command line: where to connect,
//! how to log in, and what to keep on the server. Holds no secret.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::AccountConfig;
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
}

impl Account {
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
    #[error("{PASSWORD_IN_URL}")]
    PasswordInUrl,
    #[error("account {account}: {message}")]
    Invalid { account: String, message: String },
}

pub const PASSWORD_IN_URL: &str = "the server URL seems to hold a password (USER:PASSWORD@HOST): popvault takes none in URLs, which end up in shell history, process lists and the archive's records; remove it and use $POPVAULT_PASSWORD, a password_command or the prompt";

/// Whether the user part of a `scheme://user@host...` URL holds a `:` (a password, or a typo
/// that looks like one): such a URL is refused before it is echoed anywhere.
pub fn has_password(url: &str) -> bool {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

/// The parts of a `pop3s://user@host:port` URL.
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
        if has_password(s) {
            return Err(AccountError::PasswordInUrl);
        }
        let bad = || AccountError::BadUrl(s.to_string());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let implicit_tls = match scheme.to_ascii_lowercase().as_str() {
            "pop3s" | "pops" => true,
            "pop3" | "pop" => false,
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        // The user name may itself contain '@' (often written %40): the host follows the last one.
        let (user, hostport) = rest.rsplit_once('@').ok_or_else(bad)?;
        let user = percent_decode(user).ok_or_else(bad)?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if implicit_tls => 995,
            None => 110,
        };
        if user.is_empty() || host.is_empty() || user.contains(['\r', '\n']) {
            return Err(bad());
        }
        Ok(ServerUrl {
            implicit_tls,
            user,
            host,
            port,
        })
    }
}

/// Decodes `%XX` escapes (RFC 3986), as in user names and IMAP folder paths of URLs.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    let hex: String = value
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
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
