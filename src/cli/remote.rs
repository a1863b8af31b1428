//! `s3://BUCKET/PREFIX` archives: the object store reached the way the AWS tools reach it
//! (environment, then `~/.aws/credentials` and `~/.aws/config`), and the local mirror every
//! command works on (`$XDG_CACHE_HOME/popvault/remote/<hash>/archive`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sha2::Digest as _;

use crate::archive::remote::{Mirror, S3Config, S3Store, UrlStyle};
use crate::config::S3Settings;

/// Whether an archive argument names an object store rather than a directory. Something
/// that looks like another URL, or a mistyped `s3://` (`S3://`, `s3:/`), is refused: taken
/// for a directory, it would quietly keep the mail on this machine.
pub fn is_remote(archive: &Path) -> anyhow::Result<bool> {
    let Some(text) = archive.to_str() else {
        return Ok(false);
    };
    if text.starts_with("s3://") {
        return Ok(true);
    }
    let scheme = text
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|scheme| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'))
        });
    match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("s3") => {
            bail!(
                "{text:?} is no archive location: write s3://BUCKET/PREFIX (lower-case, two slashes)"
            )
        }
        Some(_) if text.contains("://") => bail!(
            "{text:?}: archives live in a directory or at s3://BUCKET/PREFIX; other URLs are not supported"
        ),
        _ => Ok(false),
    }
}

/// The mirror of the archive at `url` (`s3://bucket[/prefix]`), with its store configured.
pub fn mirror(url: &str, settings: &S3Settings, cache_dir: &Path) -> anyhow::Result<Arc<Mirror>> {
    let config = s3_config(url, settings, &|name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    })?;
    let canonical = match config.prefix.is_empty() {
        true => format!("s3://{}", config.bucket),
        false => format!("s3://{}/{}", config.bucket, config.prefix),
    };
    // One mirror per archive and endpoint: the same bucket name on two providers is two archives.
    let key = sha2::Sha256::digest(format!("{canonical} {}", config.endpoint).as_bytes());
    let dir = cache_dir.join("remote").join(hex::encode(&key[..8]));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the local copy's directory {}", dir.display()))?;
    let _ = std::fs::write(
        dir.join("url"),
        format!("{canonical}\n{}\n", config.endpoint),
    );
    let store = S3Store::new(config)?;
    Ok(Arc::new(Mirror::new(Box::new(store), dir.join("archive"))))
}

/// Where an archive the user named (a directory or `s3://...`) is worked on: its directory,
/// and for a remote one the mirror that directory is.
pub fn locate(
    archive: &Path,
    settings: &S3Settings,
    cache_dir: &Path,
) -> anyhow::Result<(PathBuf, Option<Arc<Mirror>>)> {
    let archive = super::expand_tilde(archive);
    if !is_remote(&archive)? {
        return Ok((archive, None));
    }
    let mirror = mirror(&archive.display().to_string(), settings, cache_dir)?;
    Ok((mirror.root().to_path_buf(), Some(mirror)))
}

/// The writer of the archive at `root`: for a remote one (`mirror`), under its lock, each
/// commit uploaded as it is made.
pub fn open_writer(
    root: &Path,
    mirror: Option<&Arc<Mirror>>,
    label: &str,
    command: &str,
    wait: Option<&crate::stop::Stop>,
) -> anyhow::Result<crate::archive::Writer> {
    let opened = match mirror {
        Some(mirror) => mirror.writer(command, wait).map_err(anyhow::Error::new),
        None => crate::archive::Writer::open(root, command, wait).map_err(anyhow::Error::new),
    };
    let mut writer = opened.with_context(|| format!("cannot write to the archive at {label}"))?;
    if let Some(mirror) = mirror {
        bring_in_set_aside(mirror, &mut writer, label)?;
    }
    Ok(writer)
}

/// Adds to the archive, as new commits, the messages of this machine's copies that were set
/// aside because their commits clashed with another machine's (`Mirror::set_aside`); a copy
/// whose messages are all in goes. One that cannot be read whole (an encrypted archive without
/// its identity here, damage) is kept and named, with the way to bring it in by hand.
fn bring_in_set_aside(
    mirror: &Mirror,
    writer: &mut crate::archive::Writer,
    label: &str,
) -> anyhow::Result<()> {
    for aside in mirror.set_aside_copies() {
        let by_hand = || {
            format!(
                "`popvault --archive {} copy --to {label}` brings them in, then delete that directory",
                aside.display()
            )
        };
        // Forward journals are this machine's own, never uploaded: they go on in the copy in
        // use (a journal lost would deliver again, or never, what it recorded).
        let journals_left = mirror
            .carry_dir(&aside, crate::forward::JOURNAL_DIR)
            .with_context(|| {
                format!(
                    "cannot move the forward journals out of {}",
                    aside.display()
                )
            })?;
        // An encrypted copy's mail never goes into the clear.
        let sealed = crate::archive::crypto::sealed(&aside).map(|sealed| sealed.is_some());
        if matches!(sealed, Ok(true)) && !writer.is_encrypted() {
            eprintln!(
                "warning: this machine's copy set aside at {} is encrypted and {label} is not now: its messages are not brought in; {}",
                aside.display(),
                by_hand()
            );
            continue;
        }
        // A set-aside copy has no local index: where its messages are is read from its catalog.
        let copied = crate::archive::check_header(&aside)
            .and_then(|()| crate::archive::Index::load_locations(&aside, &mut |_, _| {}))
            .map_err(crate::copy::CopyError::from)
            .and_then(|(locations, _)| {
                let locate = |id: &crate::archive::Digest| Ok(locations.location(id));
                let source = crate::copy::Source {
                    root: &aside,
                    locate: &locate,
                    only: None,
                    upto: None,
                };
                crate::copy::copy(&source, writer, &crate::stop::Stop::new(), &|_| {})
            });
        let report = match copied.and_then(|report| Ok(writer.commit().map(|_| report)?)) {
            Ok(report) if report.damaged.is_empty() => report,
            Ok(report) => {
                eprintln!(
                    "warning: {} messages of this machine's copy set aside at {} cannot be read; {}",
                    report.damaged.len(),
                    aside.display(),
                    by_hand()
                );
                continue;
            }
            Err(e) => {
                eprintln!(
                    "warning: cannot bring in the messages of this machine's copy set aside at {} ({}); {}",
                    aside.display(),
                    crate::error_chain(&e),
                    by_hand()
                );
                continue;
            }
        };
        if journals_left {
            eprintln!(
                "note: brought into {label} the {} messages ({} catalog lines) of this machine's copy set aside at {}; it is kept, as it holds forward journals the copy in use has too: compare them, then delete it",
                report.new_messages,
                report.lines_added,
                aside.display()
            );
            continue;
        }
        eprintln!(
            "note: brought into {label} the {} messages ({} catalog lines) of this machine's copy set aside at {} (commits not uploaded that clashed with another machine's); it is deleted",
            report.new_messages,
            report.lines_added,
            aside.display()
        );
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("cannot delete {}", aside.display()))?;
    }
    Ok(())
}

/// With `$POPVAULT_REPORT_REQUESTS` set, says how many requests the store was sent.
pub fn report_requests(mirror: &Mirror) {
    if std::env::var_os("POPVAULT_REPORT_REQUESTS").is_some() {
        eprintln!("{}: {} requests", mirror.url(), mirror.store().requests());
    }
}

fn s3_config(
    url: &str,
    settings: &S3Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<S3Config> {
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/').to_string();
    if bucket.len() < 3
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!(
            "{url:?} does not name a bucket: give s3://BUCKET/PREFIX, with a bucket name of 3 or more lower-case letters, digits, `-` or `.`"
        );
    }
    if prefix.split('/').any(|part| part == "." || part == "..") {
        bail!("{url:?}: the prefix may not hold `.` or `..` parts");
    }
    let profile = settings
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let home = env("HOME").unwrap_or_else(|| "/".into());
    let credentials_file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".aws/credentials"));
    let config_file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".aws/config"));
    let from_credentials = ini_section(&credentials_file, &profile, false)?;
    let from_config = ini_section(&config_file, &profile, true)?;
    let profile_value = |key: &str| {
        from_credentials
            .get(key)
            .or_else(|| from_config.get(key))
            .cloned()
    };

    let (access_key_id, secret_access_key, session_token) = match (
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
        _ => match (
            profile_value("aws_access_key_id"),
            profile_value("aws_secret_access_key"),
        ) {
            (Some(id), Some(secret)) => (id, secret, profile_value("aws_session_token")),
            _ => bail!(
                "no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with {} (profile {profile:?})",
                credentials_file.display()
            ),
        },
    };
    let region = settings
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| profile_value("region"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint_text = settings
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| profile_value("endpoint_url"))
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint: url::Url = endpoint_text.parse().with_context(|| {
        format!("the S3 endpoint {endpoint_text:?} is not a URL (http://host:port or https://host)")
    })?;
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        // The URL itself is not repeated: it holds a secret.
        bail!(
            "the S3 endpoint has a user name or password in it: give the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), and the endpoint as http(s)://host[:port]"
        );
    }
    if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
        bail!("the S3 endpoint {endpoint_text:?} must be an http:// or https:// URL with a host");
    }
    let style = match settings.url_style.as_deref() {
        None => S3Config::default_style(&endpoint),
        Some("path") => UrlStyle::Path,
        Some("virtual") => UrlStyle::VirtualHost,
        Some(other) => bail!("[s3] url_style = {other:?}: give \"path\" or \"virtual\""),
    };
    let roots = match &settings.ca_file {
        None => None,
        Some(path) => {
            let path = super::expand_tilde(path);
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read [s3] ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                bail!("[s3] ca_file {}: no PEM certificate in it", path.display());
            }
            Some(certs.into_iter().map(|c| c.to_vec()).collect())
        }
    };
    let part_size = match settings.part_size_mib {
        None => crate::archive::remote::s3::DEFAULT_PART_SIZE,
        Some(mib @ 5..=5120) => (mib as usize) << 20,
        Some(mib) => bail!(
            "[s3] part_size_mib = {mib}: S3 takes parts of 5 to 5120 MiB (objects over twice the part size go up in parts)"
        ),
    };
    use rustls_pki_types::pem::PemObject as _;
    Ok(S3Config {
        bucket: bucket.to_string(),
        prefix,
        endpoint,
        region,
        style,
        access_key_id,
        secret_access_key,
        session_token,
        roots,
        timeout: Duration::from_secs(120),
        attempts: 6,
        part_size,
    })
}

/// The `key = value` lines of one profile of an AWS ini file (`[name]` in credentials,
/// `[profile name]` or `[default]` in config). A missing file has none.
fn ini_section(
    path: &Path,
    profile: &str,
    config: bool,
) -> anyhow::Result<HashMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let wanted = match (config, profile) {
        (true, p) if p != "default" => format!("profile {p}"),
        (_, p) => p.to_string(),
    };
    let mut values = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == wanted;
            continue;
        }
        if inside && let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_lowercase(), value.trim().to_string());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_aws_environment_is_read_like_the_aws_tools() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("HOME", "/nonexistent"),
        ]);
        let c = s3_config("s3://my-bucket/mail/home/", &S3Settings::default(), &env).unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "mail/home")
        );
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.style, UrlStyle::Path);
        assert_eq!(c.access_key_id, "AK");
    }

    #[test]
    fn a_profile_comes_from_the_aws_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[work]\naws_access_key_id = W\naws_secret_access_key = WS\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile work]\nregion = ap-south-1\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let env = env_of(&[("HOME", home), ("AWS_PROFILE", "work")]);
        let c = s3_config("s3://bucket", &S3Settings::default(), &env).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.region.as_str()),
            ("W", "ap-south-1")
        );
        assert_eq!(c.endpoint.as_str(), "https://s3.ap-south-1.amazonaws.com/");
        assert_eq!(c.style, UrlStyle::VirtualHost);
        let secret_in_url = env_of(&[
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_ENDPOINT_URL", "http://user:hunter2@127.0.0.1:9000"),
        ]);
        let err = s3_config("s3://bucket", &S3Settings::default(), &secret_in_url).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let none = env_of(&[("HOME", "/nonexistent")]);
        let err = s3_config("s3://bucket", &S3Settings::default(), &none).unwrap_err();
        assert!(err.to_string().contains("no credentials"), "{err}");
    }

    #[test]
    fn a_mistyped_location_is_not_taken_for_a_directory() {
        assert!(is_remote(Path::new("s3://b/p")).unwrap());
        assert!(!is_remote(Path::new("/srv/mail")).unwrap());
        assert!(!is_remote(Path::new("mail:2024")).unwrap());
        for typo in ["S3://b/p", "s3:/b/p", "s3:b", "https://b.example/p"] {
            assert!(is_remote(Path::new(typo)).is_err(), "{typo}");
        }
    }

    #[test]
    fn bad_bucket_names_are_refused() {
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")]);
        for url in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://b_ucket",
            "s3://bucket/../x",
        ] {
            assert!(
                s3_config(url, &S3Settings::default(), &env).is_err(),
                "{url}"
            );
        }
    }
}
