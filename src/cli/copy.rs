//! `popvault copy --to ARCHIVE`: every message the other archive lacks, with its catalog lines.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::Context;
use super::exit::Exit;
use super::list::SelectArgs;
use super::output::{byte_bar, count, human_bytes};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  popvault copy --to /media/usb/popvault
  popvault copy --to s3://my-bucket/popvault
  popvault --archive s3://my-bucket/popvault copy --to ~/restored-archive")]
pub struct CopyArgs {
    /// The archive to copy into: a directory (created when missing) or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "ARCHIVE")]
    to: PathBuf,
    #[command(flatten)]
    select: SelectArgs,
    /// When another popvault is writing the destination, wait for it instead of failing.
    #[arg(long)]
    wait: bool,
    /// Copy an encrypted archive into a plain one: its mail is then readable by anyone who can
    /// read the destination.
    #[arg(long)]
    plain: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: CopyArgs) -> anyhow::Result<Exit> {
    // The source's catalog is read a commit at a time; where each message is, and what a
    // selection picks, come from its local index.
    let index = super::index::open_index(ctx)?;
    let (selection, query) = super::index::selection(&index, &args.select, None, false)?;
    let only = crate::copy::selected(&index, &query, &selection)?;
    let to_label = super::expand_tilde(&args.to).display().to_string();
    let (dest_root, remote) = super::remote::locate(&args.to, &ctx.config.s3, &ctx.cache_dir)?;
    let same = |a: &std::path::Path, b: &std::path::Path| {
        std::fs::canonicalize(a)
            .ok()
            .is_some_and(|a| Some(a) == std::fs::canonicalize(b).ok())
    };
    if to_label == ctx.archive_label || same(&dest_root, &ctx.archive) {
        anyhow::bail!("--to names the archive being copied ({to_label}): give another archive");
    }
    let decrypting = crate::archive::crypto::sealed(&ctx.archive)?.is_some() && !args.plain;
    let plain_refused = || {
        anyhow::anyhow!(
            "{} is encrypted and {to_label} is {}: the copy would hold its mail in the clear; init it with `popvault --archive {to_label} init --encrypt ...` first, or pass --plain to write a plain copy",
            ctx.archive_label,
            match crate::archive::is_archive(&dest_root) {
                true => "a plain archive",
                false => "not an archive yet (it would be made plain)",
            }
        )
    };
    if decrypting && remote.is_none() && !crate::archive::is_archive(&dest_root) {
        return Err(plain_refused());
    }
    let wait = args.wait.then_some(&ctx.stop);
    let mut writer =
        super::remote::open_writer(&dest_root, remote.as_ref(), &to_label, "copy", wait)?;
    if decrypting && !writer.is_encrypted() {
        return Err(plain_refused());
    }
    let (_, total) = index.totals()?;
    let bar = byte_bar(Some(total), ctx.quiet || args.json, "copy");
    let locate = |id: &crate::archive::Digest| index.location(id);
    let source = crate::copy::Source {
        root: &ctx.archive,
        locate: &locate,
        only: only.as_ref(),
        upto: Some(index.last_applied()?),
    };
    let copied = crate::copy::copy(&source, &mut writer, &ctx.stop, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = copied.with_context(|| format!("cannot copy into {to_label}"))?;
    writer
        .finish()
        .with_context(|| format!("cannot commit the copy into {to_label}"))?;
    if let Some(mirror) = &remote {
        super::remote::report_requests(mirror);
    }
    if !report.damaged.is_empty() {
        super::index::confirm_damage(ctx, &index)?;
    }
    for (id, reason) in &report.damaged {
        eprintln!("skipped damaged message {id}: {reason}");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else if !ctx.quiet {
        say!(
            "{to_label}: {} new ({}), {} catalog lines added, {} already there, {} damaged left out",
            count(report.new_messages, "message"),
            human_bytes(report.bytes),
            report.lines_added,
            report.lines_present,
            report.damaged.len()
        );
    }
    if report.stopped {
        eprintln!("stopped by a signal: what was copied is committed; run the copy again to go on");
        return Ok(Exit::Interrupted);
    }
    Ok(match report.damaged.is_empty() {
        true => Exit::Ok,
        false => Exit::Damaged,
    })
}
