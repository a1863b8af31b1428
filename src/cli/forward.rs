//! `popvault forward`: a backup pass, then delivery of what it archived to each account's IMAP
//! destination; with `--every`, again and again, as a service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use super::connect::ConnectArgs;
use super::output::human_bytes;
use super::{Context, Exit};
use crate::account::Account;
use crate::archive::PackReader;
use crate::backup::{self, AccountReport, BackupOptions, Outcome, Target};
use crate::config::AccountConfig;
use crate::forward::{self, Deliveries, DeliveryReport, ForwardError, Journal};
use crate::imap::{ImapAuth, ImapUrl};
use crate::net::Secret;
use crate::net::transport::{ConnectOptions, TlsMode};
use crate::restore::imap::ImapSink;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  popvault forward                                   every account with forward_to, once
  popvault forward --every 5m                        as a service (see schedule --print systemd)
  POPVAULT_PASSWORD=... POPVAULT_FORWARD_PASSWORD=... \\
    popvault forward pop3s://me@pop.example.com --to imaps://me@gmail.com@imap.gmail.com/INBOX

Each pass backs up the accounts, then delivers to the IMAP folder every message of the account
archived since the first forward there (or --since) and not yet delivered, as new (unread) mail
dated by its Date header. Delivery is journaled in the archive: a killed run, re-run, delivers
each message exactly once. With delete_after_days, only delivered messages leave the POP server.
The IMAP password comes from forward_password_command, else $POPVAULT_FORWARD_PASSWORD, else a
prompt. SIGTERM or SIGINT stops at a message boundary.")]
pub struct ForwardArgs {
    /// A POP3 server to forward without a config file (with --to).
    #[arg(value_name = "URL", requires = "to")]
    url: Option<String>,
    /// Where the ad hoc server's mail goes: imaps://USER@HOST[:PORT]/FOLDER or imap://...
    #[arg(long, value_name = "IMAP_URL", requires = "url")]
    to: Option<String>,
    /// Forward only this account of the config file (repeatable).
    #[arg(long = "account", value_name = "NAME", conflicts_with = "url")]
    accounts: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// IMAP login: auto, plain, login, xoauth2 or oauthbearer.
    #[arg(long, value_name = "METHOD")]
    forward_auth: Option<String>,
    /// IMAP TLS: implicit, starttls or none.
    #[arg(long, value_name = "MODE")]
    forward_tls: Option<String>,
    /// Trust only the CA certificates in this PEM file for the IMAP server.
    #[arg(long, value_name = "PEM")]
    forward_ca_file: Option<std::path::PathBuf>,
    /// Trust exactly the IMAP server certificate with this SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    forward_tls_fingerprint: Option<String>,
    /// Delete from the POP3 server messages archived at least N days ago and delivered.
    #[arg(long, value_name = "N")]
    delete_after_days: Option<u32>,
    /// On the first forward to a destination: deliver mail archived since this day too.
    #[arg(long, value_name = "DATE", value_parser = super::output::parse_day_or_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Send again the messages the IMAP server refused on three passes (otherwise they wait,
    /// shown by `status`, so that a message it will never take is not uploaded every pass).
    #[arg(long)]
    retry_refused: bool,
    /// The account's forward_to is the mailbox this URL named before (a new host name, port or
    /// folder path): what was delivered through it counts as delivered, so nothing goes twice.
    /// Needs one account (--account NAME, or the only one that forwards).
    #[arg(long, value_name = "OLD_IMAP_URL")]
    renamed_from: Option<String>,
    /// Run a pass, then another this long after (30s, 5m, 1h), until stopped.
    #[arg(long, value_name = "DURATION", value_parser = parse_every)]
    every: Option<Duration>,
    /// Show what would be fetched and delivered; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON summary of each pass.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for either server.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

fn parse_every(s: &str) -> Result<Duration, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} has no unit: write 30s, 5m or 1h"));
    }
    let age = super::status::parse_age(s)?;
    age.to_std()
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a time between passes"))
}

fn humantime(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// One account and where its mail goes.
struct Route {
    account: Account,
    destination: ImapUrl,
    /// The destination as the journal names it (no secret: URLs hold none).
    label: String,
    connect: ConnectOptions,
    auth: ImapAuth,
    password_command: Option<String>,
}

impl Route {
    /// A delivery report of this route with nothing done yet.
    fn empty_report(&self) -> DeliveryReport {
        DeliveryReport {
            account: self.account.name.clone(),
            destination: self.label.clone(),
            ..DeliveryReport::default()
        }
    }
}

#[derive(Debug, Serialize)]
struct PassSummary<'a> {
    ok: bool,
    dry_run: bool,
    backups: &'a [AccountReport],
    deliveries: &'a [DeliveryOutcome],
}

#[derive(Debug, Serialize)]
struct DeliveryOutcome {
    #[serde(flatten)]
    report: DeliveryReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(ctx: &Context, args: ForwardArgs) -> anyhow::Result<Exit> {
    // An s3:// archive: the writer pulls its mirror and uploads each commit; the journals live
    // in this machine's mirror (host state, never uploaded: one machine forwards an account).
    if ctx.remote.is_some() && args.dry_run {
        // No archive there yet: the dry run shows what a first run would do.
        if let Err(e) = ctx.sync_remote(true)
            && !matches!(
                e.root_cause().downcast_ref(),
                Some(crate::archive::remote::RemoteError::NotFound { .. })
            )
        {
            return Err(e);
        }
    }
    if crate::archive::is_archive(&ctx.archive)
        && crate::archive::crypto::sealed(&ctx.archive)?.is_some()
    {
        bail!(
            "forward works on a plain archive for now: its delivery journal names messages by their SHA-256, which {} (encrypted) must not reveal; forward into a plain archive and `popvault copy --to` the encrypted one",
            ctx.archive_label
        );
    }
    if args.since.is_some_and(|since| since > chrono::Utc::now()) {
        bail!("--since is in the future: give the day from which archived mail is to be delivered");
    }
    let routes = routes(ctx, &args)?;
    let renamed = match &args.renamed_from {
        Some(from) => Some(rename(ctx, &args, &routes, from)?),
        None => None,
    };
    loop {
        let passed = pass(ctx, &args, &routes, renamed.as_ref());
        let Some(every) = args.every else {
            return passed;
        };
        // A service outlives a failed pass (the archive locked by a nightly job, a full disk):
        // it says why and tries again at the next.
        if let Err(e) = passed {
            super::report_error(&e);
            super::discard_damaged_index(&*e);
            eprintln!("forward: the next pass is in {}", humantime(every));
        }
        if ctx.stop.requested() {
            return Ok(Exit::Ok);
        }
        // Between passes nothing is held: other commands, a nightly copy, run freely.
        let until = std::time::Instant::now() + every;
        while std::time::Instant::now() < until {
            if ctx.stop.requested() {
                return Ok(Exit::Ok);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn routes(ctx: &Context, args: &ForwardArgs) -> anyhow::Result<Vec<Route>> {
    let overrides = args.connect.overrides(
        Duration::from_secs(args.timeout.max(1)),
        args.delete_after_days,
    );
    let configs: Vec<AccountConfig> = match (&args.url, &args.to) {
        (Some(url), Some(to)) => {
            let parsed: crate::account::ServerUrl = url.parse()?;
            vec![AccountConfig {
                name: format!("{}@{}", parsed.user, parsed.host),
                server: url.clone(),
                forward_to: Some(to.clone()),
                ..AccountConfig::default()
            }]
        }
        _ => {
            for name in &args.accounts {
                match ctx.config.accounts.iter().find(|a| &a.name == name) {
                    None => bail!("no account named {name:?} in the config file"),
                    Some(a) if a.forward_to.is_none() => {
                        bail!("account {name:?} has no forward_to in the config file")
                    }
                    Some(_) => {}
                }
            }
            let chosen: Vec<AccountConfig> = ctx
                .config
                .accounts
                .iter()
                .filter(|a| a.forward_to.is_some())
                .filter(|a| args.accounts.is_empty() || args.accounts.contains(&a.name))
                .cloned()
                .collect();
            if chosen.is_empty() {
                bail!(
                    "no account has a forward destination: add forward_to = \"imaps://USER@HOST/INBOX\" to an [[account]] in the config file, or give a POP3 URL and --to"
                );
            }
            chosen
        }
    };
    configs
        .iter()
        .map(|config| {
            let account = Account::resolve(config, &overrides)?;
            let to = config.forward_to.as_deref().unwrap_or_default();
            let destination: ImapUrl = to
                .parse()
                .with_context(|| format!("account {}: forward_to", config.name))?;
            let tls = match args.forward_tls.as_ref().or(config.forward_tls.as_ref()) {
                Some(t) => crate::account::parse_tls(t).map_err(anyhow::Error::msg)?,
                None if destination.implicit_tls => TlsMode::Implicit,
                None => TlsMode::StartTls,
            };
            let mut connect = ConnectOptions::new(destination.host.clone(), destination.port, tls);
            connect.ca_file = args
                .forward_ca_file
                .clone()
                .or_else(|| config.forward_ca_file.clone())
                .map(|p| super::expand_tilde(&p));
            connect.fingerprint = args
                .forward_tls_fingerprint
                .as_ref()
                .or(config.forward_tls_fingerprint.as_ref())
                .map(|f| crate::account::parse_fingerprint(f))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            connect.timeout = Duration::from_secs(args.timeout.max(1));
            let auth = match args.forward_auth.as_ref().or(config.forward_auth.as_ref()) {
                Some(a) => a.parse().map_err(anyhow::Error::msg)?,
                None => ImapAuth::Auto,
            };
            Ok(Route {
                label: destination.to_string(),
                account,
                destination,
                connect,
                auth,
                password_command: config.forward_password_command.clone(),
            })
        })
        .collect()
}

/// `--renamed-from`: moves the one route's deliveries from `from` to its destination (a dry
/// run only reads both journals). Returns the route's journal state after the move, for the dry
/// run's count of what the pass would deliver.
fn rename(
    ctx: &Context,
    args: &ForwardArgs,
    routes: &[Route],
    from: &str,
) -> anyhow::Result<Deliveries> {
    let [route] = routes else {
        bail!(
            "--renamed-from moves the deliveries of one account: give --account NAME (the account whose forward_to is the new URL)"
        );
    };
    // (The URL is not repeated: it may hold a password.)
    let old = from
        .parse::<ImapUrl>()
        .map_err(|e| anyhow::anyhow!("--renamed-from: {e}"))?
        .to_string();
    if old == route.label {
        bail!(
            "--renamed-from {old} is the account's forward_to itself: give the URL it had before"
        );
    }
    let state = forward::rename(
        &ctx.archive,
        &route.account.name,
        &old,
        &route.label,
        chrono::Utc::now(),
        args.dry_run,
    )?;
    let text = match args.dry_run {
        true => format!(
            "{}: would move the deliveries to {old} to {} ({} delivered there; dry run: nothing changed)",
            route.account.name,
            route.label,
            state.delivered.len()
        ),
        false => format!(
            "{}: deliveries to {old} moved to {} ({} delivered there)",
            route.account.name,
            route.label,
            state.delivered.len()
        ),
    };
    // (With --json, standard output holds only the passes' objects.)
    match (ctx.quiet, args.json) {
        (true, _) => {}
        (false, true) => eprintln!("note: {text}"),
        (false, false) => say!("{text}"),
    }
    Ok(state)
}

/// One backup pass, then one delivery pass; what it did is printed.
/// `renamed`: a dry run's journal state of the (one) route after `--renamed-from`.
fn pass(
    ctx: &Context,
    args: &ForwardArgs,
    routes: &[Route],
    renamed: Option<&Deliveries>,
) -> anyhow::Result<Exit> {
    // A new journal starts at this pass: what it archives is delivered (its first-seen times
    // are the backup's `now`, this instant).
    let started = chrono::Utc::now();
    let opts = BackupOptions {
        now: started,
        dry_run: args.dry_run,
        stop: ctx.stop.clone(),
        ..BackupOptions::default()
    };
    let mut backups = Vec::new();
    let mut deliveries = Vec::new();
    if args.dry_run {
        let index = match crate::archive::is_archive(&ctx.archive) {
            true => crate::archive::Index::load(&ctx.archive)?,
            false => crate::archive::Index::empty(&ctx.archive),
        };
        let mut target = Target::DryRun(&index);
        for route in routes {
            backups.push(super::backup::with_password(
                &route.account,
                &ctx.stop,
                |secret| {
                    backup::backup_account(&mut target, &route.account, secret, &opts, &mut |_| {})
                },
            ));
        }
        let index = match crate::archive::is_archive(&ctx.archive) {
            true => Some(super::index::open_index(ctx)?),
            false => None,
        };
        for route in routes {
            let archived = match &index {
                Some(index) => {
                    let state = match renamed {
                        Some(state) => state.clone().moved_back_to(args.since),
                        None => Deliveries::peek(
                            &ctx.archive,
                            &route.account.name,
                            &route.label,
                            args.since,
                        )?,
                    };
                    forward::pending(index, &state)?.len()
                }
                None => 0,
            };
            deliveries.push(DeliveryOutcome {
                report: DeliveryReport {
                    pending: archived + would_fetch(&backups, &route.account.name),
                    ..route.empty_report()
                },
                error: None,
            });
        }
        return report(ctx, args, &backups, &deliveries);
    }
    // The writer's lock is held for the backup pass only.
    let mut writer = ctx.open_writer("forward", Some(&ctx.stop))?;
    // Journals stay locked through the pass: two forwards never deliver one message twice.
    // A journal that cannot be used (damaged, locked) stops its own destination only.
    let journals: Vec<Result<Journal, ForwardError>> = routes
        .iter()
        .map(|route| {
            Journal::open(
                &ctx.archive,
                &route.account.name,
                &route.label,
                started,
                args.since,
            )
        })
        .collect();
    {
        let mut target = Target::Write(&mut writer);
        for (route, journal) in routes.iter().zip(&journals) {
            if ctx.stop.requested() {
                break;
            }
            let mut account = route.account.clone();
            let delivered = match journal {
                Ok(journal) => journal.state.delivered.clone(),
                Err(_) => Default::default(),
            };
            account.delivered_only = Some(Arc::new(delivered));
            backups.push(super::backup::with_password(
                &account,
                &ctx.stop,
                |secret| backup::backup_account(&mut target, &account, secret, &opts, &mut |_| {}),
            ));
        }
    }
    writer.finish().context("cannot commit the backup pass")?;
    // What is pending is read from the local index, brought up to date with the pass's
    // commits: memory is that of the pending mail, not of the archive.
    let index = super::index::open_index(ctx)?;
    let packs = PackReader::new(&ctx.archive);
    for (route, journal) in routes.iter().zip(journals) {
        if ctx.stop.requested() {
            break;
        }
        let mut journal = match journal {
            Ok(journal) => journal,
            Err(e) => {
                deliveries.push(DeliveryOutcome {
                    report: route.empty_report(),
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let mut open = || -> Result<ImapSink, ForwardError> {
            let secret = forward_password(route, &ctx.stop)
                .map_err(|e| ForwardError::Password(format!("{e:#}")))?;
            Ok(ImapSink::open(
                &route.destination,
                &route.connect,
                &secret,
                route.auth,
                false,
            )
            .map_err(crate::restore::RestoreError::from)?)
        };
        let delivered = forward::deliver(
            (&index, &packs),
            &mut journal,
            &route.destination,
            &mut open,
            args.retry_refused,
            &ctx.stop,
            &mut |_| {},
        );
        // A damaged index is said as the destination's error; the next pass builds it again.
        if let Err(e) = &delivered {
            super::discard_damaged_index(e);
        }
        deliveries.push(match delivered {
            Ok(report) => DeliveryOutcome {
                report,
                error: None,
            },
            Err(e) => DeliveryOutcome {
                report: DeliveryReport {
                    pending: forward::pending(&index, &journal.state).map_or(0, |p| p.len()),
                    // A stop during the login (its password command) is a stop, not a failure.
                    interrupted: ctx.stop.requested(),
                    ..route.empty_report()
                },
                error: (!ctx.stop.requested()).then(|| format!("{:#}", anyhow::Error::new(e))),
            },
        });
    }
    report(ctx, args, &backups, &deliveries)
}

/// Messages the dry run of `account` would fetch: delivered by a real run.
fn would_fetch(backups: &[AccountReport], account: &str) -> usize {
    backups
        .iter()
        .filter(|r| r.account == account)
        .filter_map(|r| r.would_fetch.as_ref())
        .map(Vec::len)
        .sum()
}

fn forward_password(route: &Route, stop: &crate::stop::Stop) -> anyhow::Result<Secret> {
    if let Some(command) = &route.password_command {
        return super::backup::run_password_command(command, route.account.password_timeout, stop)
            .with_context(|| {
                format!(
                    "the forward_password_command of account {} failed (its output is not shown)",
                    route.account.name
                )
            });
    }
    if let Some(secret) =
        super::backup::password_from_variable_or_prompt("POPVAULT_FORWARD_PASSWORD", &route.label)?
    {
        return Ok(secret);
    }
    bail!(
        "no IMAP password for {}: set forward_password_command for this account, or POPVAULT_FORWARD_PASSWORD",
        route.label
    )
}

fn report(
    ctx: &Context,
    args: &ForwardArgs,
    backups: &[AccountReport],
    deliveries: &[DeliveryOutcome],
) -> anyhow::Result<Exit> {
    let backups_ok = backups.iter().all(|r| r.outcome() == Outcome::Complete);
    let deliveries_ok = deliveries.iter().all(|d| {
        d.error.is_none()
            && d.report.refused.is_empty()
            && d.report.skipped.is_empty()
            && d.report.held_back == 0
    });
    let stopped = ctx.stop.requested() || deliveries.iter().any(|d| d.report.interrupted);
    if args.json {
        let summary = PassSummary {
            ok: backups_ok && deliveries_ok,
            dry_run: args.dry_run,
            backups,
            deliveries,
        };
        say!("{}", serde_json::to_string(&summary)?);
    } else {
        for r in backups {
            if let Some(e) = &r.error {
                eprintln!("error: {}: backup: {e}", r.account);
            } else if !ctx.quiet {
                say!(
                    "{}: {} new archived, {} deleted from the server",
                    r.account,
                    r.new_messages,
                    r.deleted
                );
            }
        }
        for d in deliveries {
            let r = &d.report;
            for s in r.refused.iter().chain(&r.skipped) {
                eprintln!(
                    "error: {} → {}: message {} ({}): {}",
                    r.account,
                    r.destination,
                    s.id,
                    s.subject.as_deref().unwrap_or(""),
                    s.reason
                );
            }
            if r.held_back > 0 {
                eprintln!(
                    "warning: {} → {}: {} refused by the server on {} passes and not sent again; `popvault forward --retry-refused` sends them",
                    r.account,
                    r.destination,
                    super::output::count(r.held_back as u64, "message"),
                    forward::GIVE_UP_AFTER
                );
            }
            match &d.error {
                Some(e) => eprintln!(
                    "error: {} → {}: {e}; {} pending, delivered by a later pass",
                    r.account, r.destination, r.pending
                ),
                None if ctx.quiet => {}
                None if args.dry_run => say!(
                    "{} → {}: {} to deliver (dry run: nothing sent)",
                    r.account,
                    r.destination,
                    r.pending
                ),
                None => say!(
                    "{} → {}: {} delivered ({}){}, {} pending",
                    r.account,
                    r.destination,
                    r.delivered,
                    human_bytes(r.bytes),
                    match r.found_delivered {
                        0 => String::new(),
                        n => format!(", {n} found already there after an interrupted run"),
                    },
                    r.pending
                ),
            }
        }
    }
    Ok(if stopped {
        Exit::Interrupted
    } else if backups_ok && deliveries_ok {
        Exit::Ok
    } else {
        Exit::Partial
    })
}
