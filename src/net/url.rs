//! Server URLs, `scheme://user@host[:port][/path]`, as POP3 accounts and IMAP destinations
//! write them. The user name may hold `@` (often written `%40`): the host follows the last one.
//! A URL with `user:password@` is refused before anything echoes it.

use std::str::FromStr;

/// The parts of a server URL, percent-decoded; the scheme lower-cased, the port as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub scheme: String,
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
    /// What follows the first `/` after the authority (an IMAP folder), decoded; may be empty.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `scheme://user@host[:port][/path]`.
    #[error("{0:?} is not a server URL")]
    Malformed(String),
    /// The user part holds a `:`: a password, or a typo that looks like one. The URL itself is
    /// not kept, so it can be shown nowhere.
    #[error(
        "the server URL seems to hold a password (USER:PASSWORD@HOST); URLs end up in shell history, process lists and the archive's records, so popvault takes none in them"
    )]
    PasswordInUrl,
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if has_password(s) {
            return Err(UrlError::PasswordInUrl);
        }
        let bad = || UrlError::Malformed(s.to_string());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = authority.rsplit_once('@').ok_or_else(bad)?;
        let user = percent_decode(user).ok_or_else(bad)?;
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                (host, after.strip_prefix(':'))
            }
            None => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = port.map(str::parse).transpose().map_err(|_| bad())?;
        if scheme.is_empty() || user.is_empty() || host.is_empty() || user.contains(['\r', '\n']) {
            return Err(bad());
        }
        Ok(ServerUrl {
            scheme: scheme.to_ascii_lowercase(),
            user,
            host: host.to_string(),
            port,
            path: percent_decode(path.trim_end_matches('/')).ok_or_else(bad)?,
        })
    }
}

/// Whether the user part of a `scheme://user@host...` URL holds a `:`.
pub fn has_password(url: &str) -> bool {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

/// Decodes `%XX` escapes (RFC 3986).
fn percent_decode(s: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_at_signs_in_user_names_and_ipv6_hosts() {
        let u: ServerUrl = "pop3s://alice%40example.com@mail.example.com"
            .parse()
            .unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.user.as_str(), u.host.as_str(), u.port),
            ("pop3s", "alice@example.com", "mail.example.com", None)
        );
        let u: ServerUrl = "POP3://bob@[::1]:1110/".parse().unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port, u.path.as_str()),
            ("pop3", "::1", Some(1110), "")
        );
        let u: ServerUrl = "imaps://me@x.org@imap.x.org/Old%20mail/2019"
            .parse()
            .unwrap();
        assert_eq!(
            (u.user.as_str(), u.path.as_str()),
            ("me@x.org", "Old mail/2019")
        );
        for bad in [
            "host-only",
            "pop3s://host-only",
            "pop3://a@b:notaport",
            "pop3://@b",
            "://a@b",
        ] {
            assert_eq!(
                bad.parse::<ServerUrl>(),
                Err(UrlError::Malformed(bad.into())),
                "{bad}"
            );
        }
        let err = "imap://a:hunter2@b".parse::<ServerUrl>().unwrap_err();
        assert_eq!(err, UrlError::PasswordInUrl);
        assert!(!err.to_string().contains("hunter2"));
    }
}
