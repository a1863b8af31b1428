//! `popvault repair`.

use anyhow::Context as _;
use clap::Args;

use super::output::byte_bar;
use super::{Context, Exit};
use crate::archive::index::read_catalog;
use crate::archive::repair;
use crate::archive::{Source, Writer};

#[derive(Debug, Args)]
#[command(after_help = "\
Run it after `popvault verify --full` reported damage. Readable messages stay; damaged packs are
salvaged record by record into a new pack and moved to ARCHIVE/quarantine/; a lost catalog is
rebuilt from the packs; what cannot be recovered is listed and recorded as lost. A later
backup fetches lost messages again from accounts that still hold them (--refetch: right away),
and importing a lost message again heals it too. Nothing readable is ever deleted.")]
pub struct RepairArgs {
    /// Show what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Right after repairing, back up the accounts whose lost messages may still be on the server.
    #[arg(long)]
    refetch: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: RepairArgs) -> anyhow::Result<Exit> {
    let bar = byte_bar(None, ctx.quiet || args.json, "repair");
    let report = if args.dry_run {
        crate::archive::check_header(&ctx.archive)?;
        repair::repair(&ctx.archive, None, &|_| bar.inc(1))?
    } else {
        let mut writer = Writer::open(&ctx.archive, "repair", None)
            .context("cannot lock the archive for repair")?;
        let report = repair::repair(&ctx.archive, Some(&mut writer), &|_| bar.inc(1))
            .context("repair failed; the archive is as it was before")?;
        writer.finish()?;
        report
    };
    bar.finish_and_clear();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.nothing_to_do() {
        if !ctx.quiet {
            say!("nothing to repair: the archive verifies");
        }
    } else {
        let would = if args.dry_run { "would " } else { "" };
        for p in &report.retired_packs {
            say!("{would}salvage and retire pack {p}");
        }
        for s in &report.retired_segments {
            say!("{would}replace damaged catalog segment {s} by its readable lines");
        }
        for c in &report.retired_commits {
            say!("{would}set aside unreadable commit record {c:08}");
        }
        say!(
            "{would}save {} readable messages from damaged packs, catalogue {} messages whose catalog line was lost",
            report.salvaged_messages,
            report.recatalogued
        );
        // The catalog read once for the dates of every lost message, not once per message.
        let dates: std::collections::HashMap<_, _> = match report.lost.is_empty() {
            true => Default::default(),
            false => {
                let lost: std::collections::HashSet<_> = report.lost.iter().map(|m| m.id).collect();
                let mut dates = std::collections::HashMap::new();
                let _ = read_catalog(&ctx.archive, &mut |e| {
                    if lost.contains(&e.id) {
                        dates.entry(e.id).or_insert(e.envelope.date);
                    }
                });
                dates
            }
        };
        for m in &report.lost {
            let sources: Vec<String> = m
                .sources
                .iter()
                .map(|s| match s {
                    Source::Pop3 { account, uidl, .. } => {
                        format!("account {account} UIDL {}", uidl.as_deref().unwrap_or("-"))
                    }
                    other => other.label(),
                })
                .collect();
            let date = dates.get(&m.id).cloned().flatten();
            say!(
                "LOST {} [{}] date {:?} from {:?} subject {:?}: {}",
                m.id,
                sources.join(", "),
                date.unwrap_or_default(),
                m.from.as_deref().unwrap_or(""),
                m.subject.as_deref().unwrap_or(""),
                m.reason
            );
        }
        if report.refetchable > 0 && !args.refetch {
            say!(
                "{} lost messages may still be on their POP3 server: the next `popvault backup` fetches them (or run `popvault repair --refetch`)",
                report.refetchable
            );
        }
    }
    if args.refetch && !args.dry_run && report.refetchable > 0 {
        let accounts: Vec<String> = report
            .lost
            .iter()
            .flat_map(|m| {
                m.sources
                    .iter()
                    .filter_map(|s| s.pop3_account().map(str::to_string))
            })
            .collect();
        let mut argv = vec![
            "popvault".to_string(),
            "--archive".into(),
            ctx.archive.display().to_string(),
            "--config".into(),
            ctx.config_path.display().to_string(),
            "backup".into(),
        ];
        for a in accounts
            .iter()
            .filter(|a| ctx.config.accounts.iter().any(|c| &c.name == *a))
        {
            argv.push("--account".into());
            argv.push(a.clone());
        }
        if !argv.iter().any(|a| a == "--account") {
            eprintln!(
                "warning: the accounts of the lost messages are not in the config file; nothing to refetch from"
            );
        } else {
            return Ok(super::run(argv.into_iter().map(Into::into)));
        }
    }
    Ok(if report.lost.is_empty() {
        Exit::Ok
    } else {
        Exit::Damaged
    })
}
