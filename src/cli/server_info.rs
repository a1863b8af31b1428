//! `popvault server-info` and `popvault setup`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::backup::password_for;
use super::connect::ConnectArgs;
use super::output::{count, human_bytes, local_time};
use super::{Context, Exit};
use crate::account::{Account, Overrides};
use crate::config::{AccountConfig, Config};
use crate::net::tls::{CertificateInfo, TlsProblem};
use crate::net::transport::TransportError;
use crate::probe::{ServerInfo, probe};

#[derive(Debug, Args)]
#[command(after_help = "\
Logs in (for the message count and size) only when a password is at hand: the account's
password_command, $POPVAULT_PASSWORD, or --login to be asked. Nothing is fetched or deleted.")]
pub struct ServerInfoArgs {
    /// An account of the config file, or a server URL (pop3s://USER@HOST[:PORT], pop3://...).
    #[arg(value_name = "ACCOUNT|URL")]
    target: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Log in even without a configured password (asks for it on the terminal).
    #[arg(long)]
    login: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn account_for(ctx: &Context, target: &str, overrides: &Overrides) -> anyhow::Result<Account> {
    let config = match ctx.config.accounts.iter().find(|a| a.name == target) {
        Some(a) => a.clone(),
        None if target.contains("://") => {
            let url: crate::account::ServerUrl = target.parse()?;
            AccountConfig {
                name: format!("{}@{}", url.user, url.host),
                server: target.to_string(),
                ..AccountConfig::default()
            }
        }
        None => bail!("{target:?} is neither an account of the config file nor a server URL"),
    };
    Ok(Account::resolve(&config, overrides)?)
}

pub fn server_info(ctx: &Context, args: ServerInfoArgs) -> anyhow::Result<Exit> {
    let account = account_for(
        ctx,
        &args.target,
        &args.connect.overrides(Duration::from_secs(30), None),
    )?;
    let have_password = account.password_command.is_some()
        || std::env::var_os("POPVAULT_PASSWORD").is_some()
        || args.login;
    let secret = if have_password {
        Some(password_for(&account, &ctx.stop)?)
    } else {
        None
    };
    let info = match probe(&account, secret.as_ref()) {
        Ok(info) => info,
        Err(e) => {
            let e = anyhow::Error::new(e);
            // What a user runs to learn how to trust a server: show the certificate anyway.
            if let Some((problem, cert)) = untrusted_certificate(&e) {
                if args.json {
                    say!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "server": account.server_label(),
                            "trusted": false,
                            "problem": problem.to_string(),
                            "certificate": cert,
                        }))?
                    );
                } else {
                    say!("server        {}", account.server_label());
                    print_certificate(&problem, &cert, &account.connect.host)?;
                }
            }
            return Err(e.context(format!("cannot probe {}", account.server_label())));
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_info(&info)?;
    }
    if let Some(e) = &info.login_error {
        eprintln!("error: the login failed: {e}");
        if let Some(hint) = info
            .login_failure
            .as_deref()
            .and_then(|c| super::hint_for_error(c))
        {
            eprintln!("hint: {hint}");
        }
        return Ok(Exit::Error);
    }
    Ok(Exit::Ok)
}

/// The certificate a server presented and why it is not trusted, when that is the error.
fn untrusted_certificate(e: &anyhow::Error) -> Option<(TlsProblem, CertificateInfo)> {
    e.chain()
        .find_map(|cause| match super::find_cause::<TransportError>(cause) {
            Some(TransportError::Certificate {
                problem,
                certificate: Some(cert),
                ..
            }) => Some((problem.clone(), (**cert).clone())),
            _ => None,
        })
}

fn print_certificate(
    problem: &TlsProblem,
    cert: &CertificateInfo,
    host: &str,
) -> std::io::Result<()> {
    let when =
        |d: Option<chrono::DateTime<chrono::Utc>>| d.map(local_time).unwrap_or_else(|| "?".into());
    say!("certificate   {}", cert.subject);
    say!("  issuer      {}", cert.issuer);
    say!(
        "  valid       {} to {}",
        when(cert.not_before),
        when(cert.not_after)
    );
    if !cert.names.is_empty() {
        say!("  for         {}", cert.names.join(", "));
    }
    say!("  sha256      {}", cert.sha256);
    say!("trust         NOT TRUSTED: {problem}");
    // rustls names the first problem only: a certificate for other names is said too, since
    // trusting its issuer would not be enough.
    let for_host = cert.names.iter().any(|n| name_matches(n, host));
    if !for_host && !matches!(problem, TlsProblem::WrongName { .. }) && !cert.names.is_empty() {
        say!(
            "              and it is for {}, not for {host}",
            cert.names.join(", ")
        );
    }
    // Only a pin trusts a certificate whatever its dates and names; --ca-file helps when the
    // sole problem is who issued it.
    let issuer_only = for_host
        && matches!(
            problem,
            TlsProblem::SelfSigned | TlsProblem::UnknownIssuer { .. }
        );
    say!(
        "  to trust it --tls-fingerprint sha256:{}{}",
        cert.sha256,
        if issuer_only {
            "   (or --ca-file with this certificate or its CA)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Whether a certificate name (`host`, `*.example.org`, an IP address) covers `host`.
fn name_matches(name: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(domain), Some((_, rest))) => domain.eq_ignore_ascii_case(rest),
        _ => false,
    }
}

fn print_info(info: &ServerInfo) -> std::io::Result<()> {
    say!("server        {}", info.server);
    say!("greeting      {}", info.greeting);
    match &info.tls {
        Some(t) => {
            let c = &t.certificate;
            say!("tls           {} ({})", t.version, t.cipher);
            say!("certificate   {}", c.subject);
            say!("  issuer      {}", c.issuer);
            let when = |d: Option<chrono::DateTime<chrono::Utc>>| {
                d.map(local_time).unwrap_or_else(|| "?".into())
            };
            say!(
                "  valid       {} to {}",
                when(c.not_before),
                when(c.not_after)
            );
            say!("  sha256      {}   (for --tls-fingerprint)", c.sha256);
            say!("trust         trusted");
        }
        None => say!("tls           none: passwords and mail cross the network in clear"),
    }
    say!(
        "login         {}",
        if info.login_methods.is_empty() {
            "USER (nothing advertised)".into()
        } else {
            info.login_methods.join(", ")
        }
    );
    say!(
        "pipelining    {}",
        if info.pipelining {
            "yes"
        } else {
            "no (one command at a time: slower)"
        }
    );
    say!(
        "uidl          {}",
        if info.uidl { "yes" } else { "not advertised" }
    );
    say!("capabilities  {}", info.capabilities.join(", "));
    if let Some(after) = &info.capabilities_after_login {
        say!("  after login {}", after.join(", "));
    }
    if let Some(delay) = info.login_delay {
        say!("login-delay   {delay} s between logins");
    }
    if let Some(expire) = &info.expire {
        say!("expire        retrieved messages deleted by the server after: {expire}");
    }
    for w in &info.warnings {
        say!("warning       {w}");
    }
    match &info.mailbox {
        Some(m) => say!(
            "mailbox       {}, {}{}",
            count(m.messages.into(), "message"),
            human_bytes(m.bytes),
            if m.uidl_supported {
                ""
            } else {
                " (no UIDL: every backup downloads everything)"
            }
        ),
        None if info.login_error.is_some() => say!("mailbox       login failed (see below)"),
        None => say!("mailbox       not logged in (give --login, or set a password_command)"),
    }
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "\
On a terminal, asks for what is not given. For scripts, give --name, --server and
--password-command (and --yes). The account is tested before it is written.")]
pub struct SetupArgs {
    /// The account's name in the config file.
    #[arg(long)]
    name: Option<String>,
    /// The server: pop3s://USER@HOST[:PORT] (TLS) or pop3://USER@HOST[:PORT] (STARTTLS).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A command whose first output line is the password, e.g. "pass show mail".
    #[arg(long, value_name = "COMMAND")]
    password_command: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Write the account even if the test login fails.
    #[arg(long)]
    force: bool,
    /// Do not ask anything.
    #[arg(long)]
    yes: bool,
}

fn ask(question: &str, default: Option<&str>) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    match default {
        Some(d) => write!(err, "{question} [{d}]: ")?,
        None => write!(err, "{question}: ")?,
    }
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().to_string();
    Ok(if answer.is_empty() {
        default.unwrap_or_default().to_string()
    } else {
        answer
    })
}

pub fn setup(ctx: &Context, args: SetupArgs) -> anyhow::Result<Exit> {
    let interactive = !args.yes && std::io::stdin().is_terminal();
    let value = |given: &Option<String>,
                 question: &str,
                 default: Option<&str>|
     -> anyhow::Result<String> {
        match given {
            Some(v) => Ok(v.clone()),
            None if interactive => ask(question, default),
            None => bail!("{question}: missing (give it as a flag, or run setup on a terminal)"),
        }
    };
    let server = value(&args.server, "POP3 server URL (pop3s://user@host)", None)?;
    let url: crate::account::ServerUrl = server.parse()?;
    // The name an ad hoc backup of the same URL records, so both runs are one account.
    let default_name = format!("{}@{}", url.user, url.host);
    let name = value(&args.name, "Account name", Some(&default_name))?;
    let password_command = value(
        &args.password_command,
        "Password command (prints the password)",
        Some("pass show mail"),
    )?;
    if ctx.config.accounts.iter().any(|a| a.name == name) {
        bail!(
            "the config file {} already has an account named {name:?}",
            ctx.config_path.display()
        );
    }
    let mut config = AccountConfig {
        name: name.clone(),
        server: server.clone(),
        tls: args.connect.tls.clone(),
        auth: args.connect.auth.clone(),
        ca_file: args.connect.ca_file.clone(),
        tls_fingerprint: args.connect.tls_fingerprint.clone(),
        password_command: Some(password_command),
        password_command_timeout: None,
        delete_after_days: None,
        ..AccountConfig::default()
    };
    let account = Account::resolve(
        &config,
        &Overrides {
            timeout: Some(Duration::from_secs(30)),
            ..Overrides::default()
        },
    )?;
    eprintln!("testing {} ...", account.server_label());
    let secret = password_for(&account, &ctx.stop);
    let mut tested = secret
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|secret| Ok(probe(&account, Some(secret))?));
    // Trust on first use, as ssh does: an untrusted certificate is shown, and pinned if the
    // user says so.
    if let (Err(e), Ok(secret)) = (&tested, &secret)
        && let Some(cert) = untrusted_certificate(e)
        && interactive
    {
        print_certificate(&cert.0, &cert.1, &account.connect.host)?;
        let answer = ask(
            "Trust this certificate from now on (its SHA-256 goes into the config as tls_fingerprint)? yes/no",
            Some("no"),
        )?;
        if answer.eq_ignore_ascii_case("yes") || answer.eq_ignore_ascii_case("y") {
            config.tls_fingerprint = Some(format!("sha256:{}", cert.1.sha256));
            let pinned = Account::resolve(
                &config,
                &Overrides {
                    timeout: Some(Duration::from_secs(30)),
                    ..Overrides::default()
                },
            )?;
            tested = Ok(probe(&pinned, Some(secret))?);
        }
    }
    let tested = tested.and_then(|info| match &info.login_error {
        Some(e) => {
            print_info(&info)?;
            bail!("the login failed: {e}")
        }
        None => Ok(info),
    });
    match tested {
        Ok(info) => print_info(&info)?,
        Err(e) if args.force => {
            eprintln!("warning: the test failed ({e:#}); writing the account anyway (--force)")
        }
        Err(e) => {
            return Err(e.context(
                "the test login failed; fix the settings, or give --force to write them anyway",
            ));
        }
    }
    write_account(ctx, &config)?;
    say!("added account {name:?} to {}", ctx.config_path.display());
    let config = if ctx.config_named {
        let path = ctx.config_path.display().to_string();
        let safe = |c: char| c.is_ascii_alphanumeric() || "/._-~+=".contains(c);
        match path.chars().all(safe) {
            true => format!("--config {path} "),
            false => format!("--config '{}' ", path.replace('\'', "'\\''")),
        }
    } else {
        String::new()
    };
    say!(
        "next: `popvault {config}backup --account {name}`, then schedule it nightly: `popvault {config}schedule --print systemd` (or cron)"
    );
    Ok(Exit::Ok)
}

/// Appends the account to the config file, creating it (mode 0600) if needed.
/// Adds the account to the config file, creating it (mode 0600) if needed; an archive named
/// with --archive or $POPVAULT_ARCHIVE goes in too when the file names none, so that later
/// runs (and the scheduled job) use the same archive. The file is replaced whole, atomically.
fn write_account(ctx: &Context, account: &AccountConfig) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Wrapper<'a> {
        account: [&'a AccountConfig; 1],
    }
    let block = toml::to_string(&Wrapper { account: [account] })?;
    let existing = match std::fs::read_to_string(&ctx.config_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", ctx.config_path.display()));
        }
    };
    let mut text = String::new();
    if ctx.archive_named && ctx.config.archive.is_none() {
        // Absolute: later runs, and scheduled ones, start in other directories.
        let archive = toml::Value::String(ctx.archive_for_later()?);
        text.push_str(&format!("archive = {archive}\n"));
    }
    text.push_str(&existing);
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&block);
    Config::parse(&text).map_err(anyhow::Error::msg)?; // what we write must read back
    // A config that is a link (dotfiles managers) is replaced where it points, link kept.
    let path = std::fs::canonicalize(&ctx.config_path).unwrap_or_else(|_| ctx.config_path.clone());
    let dir = crate::archive::durable::parent_dir(&path);
    crate::archive::durable::create_dir(dir)?;
    // Created mode 0600.
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut file = tmp.as_file();
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    tmp.persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    crate::archive::durable::sync_dir(dir)?;
    Ok(())
}
