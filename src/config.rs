//! The configuration file (TOML): where the archive lives and which POP3 accounts to back up.
//! See samples/config.toml for a commented example.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The archive directory.
    pub archive: Option<PathBuf>,
    /// Other archives `copy` keeps in step (an off-site one): `status` says how far behind
    /// each is.
    #[serde(default)]
    pub copies: Vec<PathBuf>,
    /// How to reach an `s3://` archive, beyond what the AWS environment says.
    #[serde(default)]
    pub s3: S3Settings,
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    /// For an encrypted archive with a passphrase: a command printing it (first line).
    pub passphrase_command: Option<String>,
}

/// The `[s3]` table. Each key, when set, wins over the AWS environment and `~/.aws`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `https://s3.example.net` (else $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, AWS by region).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `path` or `virtual`; by default path-style for an IP address or localhost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_style: Option<String>,
    /// PEM certificates to trust for a self-hosted endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The profile of ~/.aws/credentials and ~/.aws/config (else $AWS_PROFILE, else `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The part size of multipart uploads, 5 to 5120 MiB (default 64); larger objects than
    /// twice this go up in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_size_mib: Option<u64>,
}

/// One `[[account]]` table.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    /// `pop3s://user@host[:port]` or `pop3://user@host[:port]`.
    pub server: String,
    /// `implicit`, `starttls` or `none`; by default from the URL scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// `auto`, `user`, `apop`, `plain`, `cram-md5`, `login`, `xoauth2` or `oauthbearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Run by `sh -c`; the first line of its output is the password (or OAuth token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
    /// Seconds the password command may take (default 60); then it is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_command_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_after_days: Option<u32>,
    /// `popvault forward` delivers this account's new mail to this IMAP folder:
    /// `imaps://user@host[:port]/Folder` or `imap://...` (STARTTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_to: Option<String>,
    /// Like `password_command`, for the IMAP destination (a password or an OAuth token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_password_command: Option<String>,
    /// `auto`, `plain`, `login`, `xoauth2` or `oauthbearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<String>,
    /// `implicit`, `starttls` or `none`; by default from the URL scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_tls_fingerprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`; a missing file is an empty config only when `optional` (the default location).
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        // Relative paths in the file mean the same wherever popvault is run from (cron and a
        // shell would otherwise use different archives): they are relative to the file.
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        // A location with a scheme (`s3://...`, or a mistyped one the CLI refuses) is no path.
        let has_scheme = |p: &Path| {
            p.to_str()
                .and_then(|s| s.split('/').next())
                .is_some_and(|first| first.contains(':'))
        };
        let anchored = |p: PathBuf| {
            if p.is_relative()
                && !p.starts_with("~")
                && !p.as_os_str().is_empty()
                && !has_scheme(&p)
            {
                base.join(p)
            } else {
                p
            }
        };
        config.archive = config.archive.map(anchored);
        config.copies = std::mem::take(&mut config.copies)
            .into_iter()
            .map(anchored)
            .collect();
        config.s3.ca_file = config.s3.ca_file.take().map(anchored);
        for account in &mut config.accounts {
            account.ca_file = account.ca_file.take().map(anchored);
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| describe_toml_error(&e, text))?;
        let mut names = std::collections::HashSet::new();
        for a in &config.accounts {
            if a.name.is_empty() || !names.insert(a.name.as_str()) {
                return Err(format!(
                    "account names must be unique and not empty (found {:?} twice or empty)",
                    a.name
                ));
            }
        }
        Ok(config)
    }
}

/// The parse error as `line N: message`, without the offending line (which could hold a
/// password) and with quoted values in the message left out for the same reason.
fn describe_toml_error(error: &toml::de::Error, text: &str) -> String {
    let mut message = String::new();
    let mut quoted = false;
    for c in error.message().trim().chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                message.push_str("\"…");
            }
            '"' => quoted = false,
            '\n' if !quoted => message.push(' '),
            _ if !quoted => message.push(c),
            _ => {}
        }
        if c == '"' && !quoted {
            message.push('"');
        }
    }
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accounts_and_refuses_unknown_keys() {
        let c = Config::parse(
            "archive = \"/a\"\n[[account]]\nname = \"home\"\nserver = \"pop3s://me@h\"\n",
        )
        .unwrap();
        assert_eq!(c.archive.as_deref(), Some(Path::new("/a")));
        assert_eq!(c.accounts[0].name, "home");
        assert!(
            Config::parse("[[account]]\nname = \"x\"\nserver = \"s\"\npassword = \"oops\"\n")
                .is_err()
        );
        assert!(Config::parse("[[account]]\nname = \"x\"\nserver = \"s\"\n[[account]]\nname = \"x\"\nserver = \"t\"\n").is_err());
    }

    #[test]
    fn relative_paths_are_anchored_but_locations_with_a_scheme_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "archive = \"s3://bucket/mail\"\ncopies = [\"usb\", \"S3:/typo\"]\n[s3]\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&path, false).unwrap();
        assert_eq!(c.archive.as_deref(), Some(Path::new("s3://bucket/mail")));
        assert_eq!(
            c.copies,
            [dir.path().join("usb"), PathBuf::from("S3:/typo")]
        );
        assert_eq!(c.s3.ca_file, Some(dir.path().join("ca.pem")));
    }
}
