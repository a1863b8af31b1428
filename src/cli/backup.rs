//! `popvault backup`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use super::connect::ConnectArgs;
use super::output::{byte_bar, count, human_bytes};
use super::{Context, Exit};
use crate::account::Account;
use crate::archive::Index;
use crate::backup::{self, AccountReport, BackupOptions, Event, Outcome, Target};
use crate::config::AccountConfig;
use crate::pop3::Secret;
use crate::stop::Stop;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  popvault backup                              every account in the config file
  popvault backup --account work -q            one account, quiet (for cron)
  popvault backup pop3s://alice@mail.example.com --dry-run
  POPVAULT_PASSWORD=... popvault backup pop3://bob@localhost:1110 --tls none

Passwords come from the account's password_command (first line of its output), else
$POPVAULT_PASSWORD, else a prompt on a terminal; never from the command line.
Messages stay on the server unless --delete-after-days is given: then only messages archived at
least that many days ago, committed, re-verified in the archive, and proven to be the same
message on the server (LIST size and header block: servers reuse UIDLs) are deleted.
SIGTERM or SIGINT stops at a message boundary: what arrived is kept, nothing is deleted (exit 7).")]
pub struct BackupArgs {
    /// A server to back up without a config file: pop3s://USER@HOST[:PORT] or pop3://...
    #[arg(value_name = "URL")]
    url: Option<String>,
    /// Back up only this account of the config file (repeatable).
    #[arg(long = "account", value_name = "NAME", conflicts_with = "url")]
    accounts: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Delete from the server messages archived at least N days ago.
    #[arg(long, value_name = "N")]
    delete_after_days: Option<u32>,
    /// Show what would be fetched and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON run summary.
    #[arg(long)]
    json: bool,
    /// Wait for another popvault writing the archive instead of failing at once.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait for the server: no byte in this long is a timeout, fewer than 1 KiB a
    /// stall (a server trickling bytes); either ends the connection, which is then retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// RETR commands in flight when the server supports pipelining.
    #[arg(long, value_name = "N", default_value_t = 64, hide = true)]
    window: usize,
    /// Act as if the time were this (RFC 3339), for tests of --delete-after-days.
    #[arg(long, value_name = "TIME", hide = true, value_parser = super::output::parse_day_or_time)]
    now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize)]
struct RunSummary<'a> {
    ok: bool,
    dry_run: bool,
    accounts: &'a [AccountReport],
}

pub fn run(ctx: &Context, args: BackupArgs) -> anyhow::Result<Exit> {
    let overrides = args.connect.overrides(
        Duration::from_secs(args.timeout.max(1)),
        args.delete_after_days,
    );
    let configs: Vec<AccountConfig> = match &args.url {
        Some(url) => {
            let parsed: crate::account::ServerUrl = url.parse()?;
            vec![AccountConfig {
                name: format!("{}@{}", parsed.user, parsed.host),
                server: url.clone(),
                ..AccountConfig::default()
            }]
        }
        None if ctx.config.accounts.is_empty() => {
            bail!(
                "no accounts configured: add an [[account]] to the config file (see samples/config.toml) or give a server URL"
            )
        }
        None => {
            for name in &args.accounts {
                if !ctx.config.accounts.iter().any(|a| &a.name == name) {
                    bail!("no account named {name:?} in the config file");
                }
            }
            ctx.config
                .accounts
                .iter()
                .filter(|a| args.accounts.is_empty() || args.accounts.contains(&a.name))
                .cloned()
                .collect()
        }
    };
    let mut accounts = configs
        .iter()
        .map(|c| Account::resolve(c, &overrides))
        .collect::<Result<Vec<_>, _>>()?;
    // An account that forwards loses from its server only mail delivered there (or nothing,
    // when that cannot be told).
    for (account, config) in accounts.iter_mut().zip(&configs) {
        if let Some(to) = &config.forward_to {
            let delivered = crate::forward::destination_label(to)
                .and_then(|label| {
                    crate::forward::Deliveries::peek(&ctx.archive, &account.name, &label, None).ok()
                })
                .map(|state| state.delivered)
                .unwrap_or_default();
            account.delivered_only = Some(std::sync::Arc::new(delivered));
        }
    }

    let opts = BackupOptions {
        dry_run: args.dry_run,
        window: args.window.max(1),
        now: args.now.unwrap_or_else(chrono::Utc::now),
        stop: ctx.stop.clone(),
        ..BackupOptions::default()
    };
    let quiet = ctx.quiet || args.json;
    let bar = byte_bar(Some(0), quiet, "backup");
    let mut on_event = |event: Event<'_>| match event {
        Event::Planned { bytes, .. } => bar.inc_length(bytes),
        Event::Fetched { bytes } => bar.inc(bytes),
        Event::Retrying {
            account,
            attempt,
            error,
            wait,
        } => {
            if !ctx.quiet {
                bar.suspend(|| {
                    eprintln!(
                        "warning: {account}: {error}; reconnecting in {}s (attempt {attempt})",
                        wait.as_secs()
                    )
                });
            }
        }
    };

    let mut reports = Vec::new();
    if args.dry_run {
        ctx.sync_remote(false)?;
        let index = if crate::archive::is_archive(&ctx.archive) {
            crate::archive::check_header(&ctx.archive)?;
            Index::load(&ctx.archive)?
        } else {
            Index::empty(&ctx.archive)
        };
        let mut target = Target::DryRun(&index);
        for account in &accounts {
            if opts.stop.requested() {
                break;
            }
            reports.push(with_password(account, &opts.stop, |secret| {
                backup::backup_account(&mut target, account, secret, &opts, &mut on_event)
            }));
        }
    } else {
        let mut writer = ctx.open_writer("backup", args.wait.then_some(&ctx.stop))?;
        let mut target = Target::Write(&mut writer);
        for account in &accounts {
            if opts.stop.requested() {
                break;
            }
            reports.push(with_password(account, &opts.stop, |secret| {
                backup::backup_account(&mut target, account, secret, &opts, &mut on_event)
            }));
        }
        writer.finish().context("cannot commit the backup")?;
        let lines = reports
            .iter()
            .map(|r| r.new_messages + r.already_archived)
            .sum();
        super::index::refresh_after_write(ctx, lines);
    }
    bar.finish_and_clear();
    print_reports(ctx, &args, &reports)?;
    Ok(exit_status(&reports, opts.stop.requested()))
}

/// 7 when stopped; else 0 when every account is complete, 1 when every one failed outright,
/// and 4 (partly failed) for anything in between.
fn exit_status(reports: &[AccountReport], stopped: bool) -> Exit {
    let outcomes: Vec<Outcome> = reports.iter().map(AccountReport::outcome).collect();
    if stopped || outcomes.contains(&Outcome::Interrupted) {
        Exit::Interrupted
    } else if outcomes.iter().all(|o| *o == Outcome::Complete) {
        Exit::Ok
    } else if outcomes.iter().all(|o| *o == Outcome::Failed) {
        Exit::Error
    } else {
        Exit::Partial
    }
}

/// Gets the account's secret and runs `f`; a failure to get it is that account's failure.
pub(super) fn with_password(
    account: &Account,
    stop: &Stop,
    f: impl FnOnce(&Secret) -> AccountReport,
) -> AccountReport {
    match password_for(account, stop) {
        Ok(secret) => f(&secret),
        Err(e) => AccountReport {
            account: account.name.clone(),
            server: account.server_label(),
            error: Some(format!("{e:#}")),
            ..AccountReport::default()
        },
    }
}

/// `$POPVAULT_PASSWORD`, else a no-echo prompt when on a terminal, else nothing.
pub fn password_from_env_or_prompt(label: &str) -> anyhow::Result<Option<Secret>> {
    password_from_variable_or_prompt("POPVAULT_PASSWORD", label)
}

/// The environment variable `variable`, else a no-echo prompt when on a terminal, else nothing.
pub fn password_from_variable_or_prompt(
    variable: &str,
    label: &str,
) -> anyhow::Result<Option<Secret>> {
    if let Some(p) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let p = p
            .into_string()
            .map_err(|_| anyhow::anyhow!("{variable} is not UTF-8"))?;
        return Ok(Some(Secret::new(p)));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(Some(Secret::new(rpassword::prompt_password(format!(
            "Password for {label}: "
        ))?)));
    }
    Ok(None)
}

/// The password or token: `password_command`, else `$POPVAULT_PASSWORD`, else a prompt.
pub fn password_for(account: &Account, stop: &Stop) -> anyhow::Result<Secret> {
    if let Some(command) = &account.password_command {
        return run_password_command(command, account.password_timeout, stop).with_context(|| {
            format!(
                "the password command of account {} failed (its output is not shown)",
                account.name
            )
        });
    }
    if let Some(secret) = password_from_env_or_prompt(&account.server_label())? {
        return Ok(secret);
    }
    bail!(
        "no password: set password_command for this account in the config file, or POPVAULT_PASSWORD"
    )
}

/// The most a password command may print: a password or a token is far shorter.
const MAX_PASSWORD_OUTPUT: usize = 64 * 1024;

/// Runs `sh -c command` and takes the first line it prints, as soon as the command has ended
/// and the line is complete (a background child it left may hold its output open). A command
/// still running after `timeout` (a keyring waiting for an unlock nobody will type) is killed
/// with everything it started, instead of holding the backup for ever; so is one running when
/// a stop is requested.
pub(crate) fn run_password_command(
    command: &str,
    timeout: Duration,
    stop: &Stop,
) -> anyhow::Result<Secret> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .spawn()
        .context("cannot run the password command")?;
    let mut stdout = child
        .stdout
        .take()
        .context("no pipe from the password command")?;
    let (chunks, arriving) = mpsc::channel::<Vec<u8>>();
    // Reads until the end of the output or the bound; detached, as a background child of the
    // command may keep the pipe open long after the line we need.
    std::thread::spawn(move || {
        let mut read = 0;
        let mut buf = vec![0u8; 4096];
        while read < MAX_PASSWORD_OUTPUT {
            match std::io::Read::read(&mut stdout, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    read += n;
                    if chunks.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let kill = |child: &mut std::process::Child| {
        if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
    };
    let started = std::time::Instant::now();
    let mut output = Vec::new();
    let mut ended = false;
    loop {
        loop {
            match arriving.try_recv() {
                Ok(chunk) => output.extend(chunk),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        if stop.requested() {
            kill(&mut child);
            bail!("stopped by a signal while it ran");
        }
        if let Some(status) = child
            .try_wait()
            .context("cannot wait for the password command")?
        {
            if !status.success() {
                bail!("it exited with {status}");
            }
            if ended || output.contains(&b'\n') {
                break;
            }
        }
        if started.elapsed() >= timeout {
            kill(&mut child);
            bail!(
                "it did not finish in {} s and was stopped (raise password_command_timeout if it waits for you)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = output.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = std::str::from_utf8(first)
        .context("it printed something that is not UTF-8")?
        .trim_end_matches('\r');
    if first.is_empty() {
        bail!("it printed nothing");
    }
    Ok(Secret::new(first))
}

fn print_reports(
    ctx: &Context,
    args: &BackupArgs,
    reports: &[AccountReport],
) -> anyhow::Result<()> {
    if args.json {
        let summary = RunSummary {
            ok: reports.iter().all(|r| r.ok),
            dry_run: args.dry_run,
            accounts: reports,
        };
        say!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    for r in reports {
        if let Some(e) = &r.error {
            eprintln!("error: {}: {e}", r.account);
            if let Some(hint) = r.cause.as_deref().and_then(|c| super::hint_for_error(c)) {
                eprintln!("hint: {hint}");
            }
        }
        // Mail left behind is an error even for cron (-q): the backup is incomplete.
        if !r.unfetched.is_empty() {
            eprintln!(
                "error: {}: {} could not be fetched; the next run tries again:",
                r.account,
                count(r.unfetched.len() as u64, "message")
            );
            for u in &r.unfetched {
                eprintln!(
                    "  #{} UIDL {}: {}",
                    u.msgno,
                    u.uidl.as_deref().unwrap_or("-"),
                    u.reason
                );
            }
        }
        if r.interrupted {
            eprintln!(
                "{}: stopped by a signal; what arrived is archived, nothing was deleted; run the backup again to continue",
                r.account
            );
        }
        if ctx.quiet {
            continue;
        }
        for w in &r.warnings {
            eprintln!("warning: {}: {w}", r.account);
        }
        if args.dry_run {
            let would_fetch = r.would_fetch.as_deref().unwrap_or_default();
            let would_delete = r.would_delete.as_deref().unwrap_or_default();
            say!(
                "{}: would fetch {} ({}), would delete {}; {} on the server",
                r.account,
                count(would_fetch.len() as u64, "message"),
                human_bytes(
                    would_fetch
                        .iter()
                        .map(|p| p.size)
                        .fold(0, u64::saturating_add)
                ),
                would_delete.len(),
                r.on_server
            );
            for p in would_fetch {
                say!(
                    "  fetch  #{} UIDL {} ({})",
                    p.msgno,
                    p.uidl.as_deref().unwrap_or("-"),
                    human_bytes(p.size)
                );
            }
            for p in would_delete {
                say!(
                    "  delete #{} UIDL {} ({})",
                    p.msgno,
                    p.uidl.as_deref().unwrap_or("-"),
                    human_bytes(p.size)
                );
            }
        } else if r.ok {
            let already = match r.already_archived {
                0 => String::new(),
                n => format!(", {n} fetched but already archived"),
            };
            say!(
                "{}: {} ({}){already} in {:.1} s, {} deleted, {} on the server",
                r.account,
                count(r.new_messages, "new message"),
                human_bytes(r.fetched_bytes),
                r.seconds,
                r.deleted,
                r.on_server
            );
        }
    }
    Ok(())
}
