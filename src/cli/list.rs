//! `popvault list` and `popvault cat`.

use std::collections::BTreeSet;
use std::io::Write;

use clap::Args;

use super::output::parse_day_or_time;
use super::output::{fit, human_bytes, ignore_closed_pipe, local_time};
use super::{Context, Exit};
use crate::archive::select::Selection;
use crate::archive::{ArchiveError, Message, PackReader};

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
    /// The selection, its `--account` names checked against `known`, the labels there are
    /// (the local index's): a name no message comes from (a typo) is an error, not an empty
    /// answer; an import label with a relative path (`maildir:md`) means the path as `import`
    /// records it, absolute.
    pub fn selection_in(&self, known: &[String]) -> anyhow::Result<Selection> {
        let accounts = if self.accounts.is_empty() {
            Vec::new()
        } else {
            let known: BTreeSet<String> = known.iter().cloned().collect();
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
    let index = super::index::open_index(ctx)?;
    // The index narrows by source, date, From and Subject; the selection decides.
    let (selection, query) = super::index::selection(&index, &args.select, None, false)?;
    super::index::print_selected(&index, &query, &selection, args.json, None)
}

/// One message as `list` and `search` show it: a line (id, date, sender, subject, size), or
/// its JSON object.
pub fn print_message(out: &mut dyn Write, m: &Message<'_>, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, m).map_err(std::io::Error::from)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "{}  {}  {:<28}  {}  ({})",
        m.id.short(),
        local_time(m.time),
        fit(m.envelope.from.as_deref().unwrap_or("(no sender)"), 28),
        m.envelope.subject.as_deref().unwrap_or("(no subject)"),
        human_bytes(m.size)
    )
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
    let index = super::index::open_index(ctx)?;
    let (id, location) = index.resolve(&args.id)?;
    let mut out = std::io::stdout().lock();
    match PackReader::new(&ctx.archive).copy(&id, &location, &mut out) {
        Err(ArchiveError::Output { source, .. }) => ignore_closed_pipe(Err(source))?,
        other => other?,
    }
    ignore_closed_pipe(out.flush())?;
    Ok(Exit::Ok)
}
