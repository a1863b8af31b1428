//! `popvault list` and `popvault cat`.

use std::collections::BTreeSet;
use std::io::Write;

use clap::Args;

use super::output::parse_day_or_time;
use super::output::{fit, human_bytes, ignore_closed_pipe, local_time};
use super::{Context, Exit};
use crate::archive::select::{Selection, message_time};
use crate::archive::{Archive, ArchiveError};

/// The filters shared by list, restore and export.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Only messages from this POP3 account or import source label (repeatable).
    #[arg(long = "account", value_name = "NAME")]
    pub accounts: Vec<String>,
    /// Only messages dated on or after DATE (YYYY-MM-DD: local midnight; or an RFC 3339 time).
    /// A message's date is its Date header, else its first Received header, else when popvault
    /// first saw it (a date before 1971 or in the future does not count).
    #[arg(long, value_name = "DATE", value_parser = parse_day_or_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only messages dated before DATE (YYYY-MM-DD: local midnight; or an RFC 3339 time).
    #[arg(long, value_name = "DATE", value_parser = parse_day_or_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only messages whose From contains TEXT (any case).
    #[arg(long, value_name = "TEXT")]
    pub from: Option<String>,
    /// Only messages whose Subject contains TEXT (any case).
    #[arg(long, value_name = "TEXT")]
    pub subject: Option<String>,
}

impl SelectArgs {
    /// The selection, its `--account` names checked against `archive`: a name no message
    /// comes from (a typo) is an error, not an empty answer; an import label with a relative
    /// path (`maildir:md`) means the path as `import` records it, absolute.
    pub fn selection(&self, archive: &Archive) -> anyhow::Result<Selection> {
        let accounts = if self.accounts.is_empty() {
            Vec::new()
        } else {
            let known: BTreeSet<String> = archive
                .messages()
                .iter()
                .flat_map(|m| m.sources.iter().map(|s| s.label()))
                .collect();
            let mut accounts = Vec::new();
            for name in &self.accounts {
                let label = [name.clone(), absolute_label(name)]
                    .into_iter()
                    .find(|label| known.contains(label))
                    .ok_or_else(|| unknown_account(name, &known))?;
                // A Maildir means its Maildir++ folders too, as `import maildir:` read them.
                if label.starts_with("maildir:") {
                    let folders = format!("{label}/.");
                    accounts.extend(known.iter().filter(|k| k.starts_with(&folders)).cloned());
                }
                accounts.push(label);
            }
            accounts
        };
        Ok(Selection {
            accounts,
            since: self.since,
            until: self.until,
            from: self.from.clone(),
            subject: self.subject.clone(),
            ids: Vec::new(),
        })
    }
}

/// `maildir:md` as `import` records it: `maildir:/abs/md`.
fn absolute_label(name: &str) -> String {
    match name.split_once(':') {
        Some((kind @ ("maildir" | "mbox" | "eml"), path)) if !path.is_empty() => {
            let path = super::expand_tilde(std::path::Path::new(path));
            let path = std::fs::canonicalize(&path)
                .or_else(|_| std::path::absolute(&path))
                .unwrap_or(path);
            format!("{kind}:{}", path.display())
        }
        _ => name.to_string(),
    }
}

fn unknown_account(name: &str, known: &BTreeSet<String>) -> anyhow::Error {
    if known.is_empty() {
        return anyhow::anyhow!("no message comes from {name:?}: the archive is empty");
    }
    let shown: Vec<&str> = known.iter().take(8).map(String::as_str).collect();
    let more = if known.len() > shown.len() {
        format!(
            " and {} more (`popvault stats` lists them)",
            known.len() - shown.len()
        )
    } else {
        String::new()
    };
    anyhow::anyhow!(
        "no message in the archive comes from {name:?}; its accounts and sources are: {}{more}",
        shown.join(", ")
    )
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  popvault list --since 2024-01-01 --from alice
  popvault list --account home --json | jq -r .subject")]
pub struct ListArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// One JSON object per line with the full id and every catalog field.
    #[arg(long)]
    json: bool,
}

pub fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<Exit> {
    let archive = ctx.open_archive()?;
    let selection = args.select.selection(&archive)?;
    let mut messages: Vec<_> = archive
        .messages()
        .into_iter()
        .filter(|m| selection.matches(m))
        .collect();
    messages.sort_by_key(|m| (message_time(m), m.id));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for m in &messages {
        let written = if args.json {
            serde_json::to_writer(&mut out, m)
                .map_err(std::io::Error::from)
                .and_then(|_| writeln!(out))
        } else {
            let date = local_time(m.time);
            writeln!(
                out,
                "{}  {}  {:<28}  {}  ({})",
                m.id.short(),
                date,
                fit(m.envelope.from.as_deref().unwrap_or("(no sender)"), 28),
                m.envelope.subject.as_deref().unwrap_or("(no subject)"),
                human_bytes(m.size)
            )
        };
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(Exit::Ok); // `popvault list | head`
            }
            return Err(e.into());
        }
    }
    ignore_closed_pipe(out.flush())?;
    Ok(Exit::Ok)
}

#[derive(Debug, Args)]
#[command(after_help = "\
Example: popvault cat 3f2a9c > message.eml   (the id prefixes `popvault list` shows are enough)")]
pub struct CatArgs {
    /// The message id (64 hex digits) or a unique prefix of it.
    #[arg(value_parser = id_prefix)]
    id: String,
}

/// A message id or a prefix of one, as a command line gives it: hex digits, at least one.
pub fn id_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) || text.len() > 64 {
        return Err("a message id is up to 64 hex digits (a unique prefix will do), as `popvault list` shows".into());
    }
    Ok(text.to_string())
}

pub fn cat(ctx: &Context, args: CatArgs) -> anyhow::Result<Exit> {
    let archive = ctx.open_archive()?;
    let id = archive.resolve(&args.id)?;
    let mut out = std::io::stdout().lock();
    match archive.copy_message(&id, &mut out) {
        Err(ArchiveError::Output { source, .. }) => ignore_closed_pipe(Err(source))?,
        other => other?,
    }
    ignore_closed_pipe(out.flush())?;
    Ok(Exit::Ok)
}
