//! `popvault verify`.

use anyhow::Context as _;
use clap::Args;

use super::output::{byte_bar, count, human_bytes};
use super::{Context, Exit};
use crate::archive::verify::{self, DamagedMessage};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  popvault verify              structure only: seconds, even for a large archive
  popvault verify --full       every message decompressed and re-hashed (weekly, say)
After damage, `popvault repair` keeps every readable message and lists what is lost.")]
pub struct VerifyArgs {
    /// Decompress and re-hash every message (reads the whole archive).
    #[arg(long)]
    full: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: VerifyArgs) -> anyhow::Result<Exit> {
    crate::archive::check_header(&ctx.archive)?;
    let total = match args.full {
        true => Some(
            crate::archive::index::read_records(&ctx.archive)?
                .commits
                .iter()
                .map(|c| c.raw_bytes)
                .fold(0, u64::saturating_add),
        ),
        false => None,
    };
    let bar = byte_bar(total, ctx.quiet || args.json, "verify");
    let (mut report, mut catalog) =
        verify::verify(&ctx.archive, args.full, &|bytes| bar.inc(bytes))?;
    bar.finish_and_clear();
    // Damage to this machine's copy of a remote archive is mended from the store, then the
    // copy is checked again: what stays damaged is the store's (or not uploaded yet).
    if let Some(mirror) = &ctx.remote
        && !report.is_ok()
    {
        let mended = mirror
            .mend()
            .with_context(|| format!("cannot read the archive at {}", ctx.archive_label))?;
        match mended {
            None => eprintln!(
                "note: a writer of this machine is using the local copy of {}; run verify again once it is done to mend the copy from the store",
                ctx.archive_label
            ),
            Some(keys) if !keys.is_empty() => {
                for key in &keys {
                    eprintln!(
                        "note: the local copy's {key} was missing or damaged: fetched it again from {} (the store's copy is whole)",
                        mirror.url()
                    );
                }
                (report, catalog) = verify::verify(&ctx.archive, args.full, &|_| {})?;
            }
            Some(_) => {}
        }
    }
    // The local copy is checked above; the remote's objects are listed (with --full, re-read)
    // and compared with it.
    if let Some(mirror) = &ctx.remote {
        let problems = match args.full {
            true => mirror.check_remote(),
            false => mirror.check_listing(),
        }
        .with_context(|| format!("cannot read the archive at {}", ctx.archive_label))?;
        report.problems.extend(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", mirror.url())),
        );
    }
    // The local index is a cache of the catalog: checked against it, and with --full built
    // again from it.
    let index = match (args.full, report.sealed_files_only) {
        // Without the identity there is no catalog to check the index against.
        (_, true) => return say_report(ctx, &args, &report),
        (true, _) => super::index::rebuild_index(ctx),
        (false, _) => super::index::open_index(ctx),
    };
    // It is no part of the archive: what is wrong with it is said and set right, and says
    // nothing of the archive's health (the exit status).
    let checked = index.and_then(|index| Ok((index.disagreements(&catalog)?, index)));
    match checked {
        Ok(((0, 0, false), _)) => {}
        Ok(((wrong, unknown, totals_off), index)) => {
            let path = index.path().to_path_buf();
            drop(index);
            super::index::rebuild_index(ctx)?;
            let totals = match totals_off {
                true => ", its running totals off",
                false => "",
            };
            eprintln!(
                "note: the local index {} disagreed with the catalog ({wrong} messages placed wrongly or not stored, {unknown} stored but not placed{totals}); built it again (a cache: the archive is not affected)",
                path.display()
            );
        }
        Err(e) => {
            crate::archive::local_index::discard(&super::index::index_path(ctx));
            eprintln!(
                "warning: the local index could not be checked ({e:#}); deleted it, the next command builds it again (a cache: the archive is not affected)"
            );
        }
    }
    say_report(ctx, &args, &report)
}

fn say_report(
    ctx: &Context,
    args: &VerifyArgs,
    report: &verify::VerifyReport,
) -> anyhow::Result<Exit> {
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            eprintln!("damaged: {p}");
        }
        for m in &report.damaged {
            eprintln!("damaged message {}", describe(m));
        }
        for m in &report.uncatalogued {
            eprintln!("uncatalogued message {}", describe(m));
        }
        for m in &report.quarantined {
            eprintln!("lost message {}", describe(m));
        }
        if !ctx.quiet {
            for l in &report.leftovers {
                say!(
                    "note: {l} was left by an interrupted run; the next import or backup removes it"
                );
            }
            let level = if args.full { "full" } else { "quick" };
            let checked = if args.full {
                format!(", {} re-hashed", human_bytes(report.bytes_checked))
            } else {
                String::new()
            };
            if report.sealed_files_only {
                let verdict = match report.problems.len() {
                    0 => "OK".to_string(),
                    n => format!("{} DAMAGED", count(n as u64, "file")),
                };
                let what = match args.full {
                    true => "present, of their recorded size and SHA-256",
                    false => "present, of their recorded size",
                };
                say!(
                    "verify ({level}, encrypted, no identity): {} packs and {} commits (signed, {} messages): every file {what}: {verdict}",
                    report.packs,
                    report.commits,
                    report.messages,
                );
                say!(
                    "note: the messages themselves were not decrypted or re-hashed: give --identity to check every message too"
                );
                return Ok(if report.is_ok() {
                    Exit::Ok
                } else {
                    Exit::Damaged
                });
            }
            let verdict = if report.is_ok() {
                "OK".to_string()
            } else {
                format!(
                    "{} DAMAGED",
                    report.damaged.len() + report.uncatalogued.len()
                )
            };
            say!(
                "verify ({level}): {} in {} packs, {} commits{checked}: {verdict}",
                count(report.messages as u64, "message"),
                report.packs,
                report.commits
            );
        }
    }
    Ok(if report.is_ok() {
        Exit::Ok
    } else {
        Exit::Damaged
    })
}

fn describe(m: &DamagedMessage) -> String {
    let sources: Vec<String> = m
        .sources
        .iter()
        .map(|s| match s {
            crate::archive::Source::Pop3 { account, uidl, .. } => {
                format!("{account} UIDL {}", uidl.as_deref().unwrap_or("-"))
            }
            other => other.label(),
        })
        .collect();
    format!(
        "{} [{}] from {:?} subject {:?}: {}{}",
        m.id,
        sources.join(", "),
        m.from.as_deref().unwrap_or(""),
        m.subject.as_deref().unwrap_or(""),
        m.reason,
        if m.pack.is_empty() {
            String::new()
        } else {
            format!(" (pack {})", m.pack)
        }
    )
}
