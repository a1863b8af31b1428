//! Import of a `popvault export` tar (plain or zstd): every message with the metadata the
//! exporting archive had. The tar is read as untrusted input: only the three kinds of member an
//! export has are accepted, never a link, device, absolute path or `..`, and every member's size
//! is bounded; nothing from it is ever written to disk except into the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ImportError, ImportReport};
use crate::archive::{Digest, Incoming, Source, Writer};

/// The largest message member accepted.
const MAX_MESSAGE: u64 = 1 << 30;
/// The largest MANIFEST.jsonl or SHA256SUMS accepted.
const MAX_INDEX: u64 = 1 << 30;
/// Messages are handed to the writer in batches of about this many bytes.
const BATCH_BYTES: u64 = 16 << 20;

#[derive(Deserialize)]
struct ManifestLine {
    id: Digest,
    first_seen: DateTime<Utc>,
    sources: Vec<Source>,
    #[serde(default)]
    flags: Option<String>,
}

fn hostile(path: &Path, what: &str) -> ImportError {
    ImportError::HostileTar {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// The tar as read: plain or zstd-compressed (by its magic number).
fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(read_err)?);
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(read_err)?;
    let file = BufReader::new(File::open(path).map_err(read_err)?);
    let input: Box<dyn Read> = if n == 4 && magic == [0x28, 0xB5, 0x2F, 0xFD] {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(read_err)?)
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(input))
}

/// What a member of an export is, by its name.
enum Member {
    Manifest,
    Sums,
    Message(Digest),
}

/// Judges a member by its header alone: a regular file with a relative path and no `..`, one of
/// the names an export has (`MANIFEST.jsonl` first), of a bounded size. Returns its name and
/// the most bytes it may hold.
fn check_member<R: Read>(
    path: &Path,
    entry: &tar::Entry<'_, R>,
    first: bool,
) -> Result<(Member, String, u64), ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let header = entry.header();
    let member = entry.path().map_err(read_err)?.into_owned();
    let shown = member.display().to_string();
    if !matches!(
        header.entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    ) {
        return Err(hostile(
            path,
            &format!(
                "member {shown:?} is a {:?}, not a file (links and devices are refused)",
                header.entry_type()
            ),
        ));
    }
    if member
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(hostile(
            path,
            &format!("member {shown:?} has an absolute path or '..'"),
        ));
    }
    let name = member.to_string_lossy().into_owned();
    let limit = if name.starts_with("messages/") {
        MAX_MESSAGE
    } else {
        MAX_INDEX
    };
    let size = header.size().map_err(read_err)?;
    if size > limit {
        return Err(hostile(
            path,
            &format!("member {shown:?} claims {size} bytes, more than {limit}"),
        ));
    }
    if first != (name == "MANIFEST.jsonl") {
        return Err(hostile(
            path,
            "MANIFEST.jsonl is not the first member: not a popvault export",
        ));
    }
    let message = name
        .strip_prefix("messages/")
        .and_then(|n| n.strip_suffix(".eml"))
        .and_then(|hex| hex.parse::<Digest>().ok());
    let kind = match (name.as_str(), message) {
        ("MANIFEST.jsonl", _) => Member::Manifest,
        ("SHA256SUMS", _) => Member::Sums,
        (_, Some(id)) => Member::Message(id),
        (_, None) => {
            return Err(hostile(
                path,
                &format!("unexpected member {shown:?}: not a popvault export"),
            ));
        }
    };
    Ok((kind, shown, limit))
}

/// Imports an export in two passes: every member header is checked first, so that a hostile
/// tar is refused before anything from it is added; then the messages are read, each checked
/// against its name (SHA-256) and found in the manifest.
pub fn import_tar(
    writer: &mut Writer,
    path: &Path,
    report: &mut ImportReport,
    progress: &mut super::Progress<'_>,
) -> Result<(), ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut members = 0;
    for entry in open(path)?.entries().map_err(read_err)? {
        check_member(path, &entry.map_err(read_err)?, members == 0)?;
        members += 1;
    }
    if members == 0 {
        return Err(hostile(path, "no MANIFEST.jsonl: not a popvault export"));
    }

    // Pass two sees the same checks (the file could have changed in between); the first
    // member is the manifest, so every message can be looked up in it.
    let mut tar = open(path)?;
    let mut manifest: HashMap<Digest, ManifestLine> = HashMap::new();
    let mut batch: Vec<Incoming> = Vec::new();
    let mut batch_bytes = 0;
    for (index, entry) in tar.entries().map_err(read_err)?.enumerate() {
        let mut entry = entry.map_err(read_err)?;
        let (kind, shown, limit) = check_member(path, &entry, index == 0)?;
        let size = entry.header().size().map_err(read_err)?;
        let mut bytes = Vec::with_capacity(size.min(64 << 20) as usize);
        (&mut entry)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > limit {
            return Err(hostile(
                path,
                &format!("member {shown:?} is larger than {limit} bytes"),
            ));
        }
        match kind {
            Member::Manifest => {
                for (n, line) in bytes
                    .split(|&b| b == b'\n')
                    .enumerate()
                    .filter(|(_, l)| !l.is_empty())
                {
                    let record: ManifestLine = serde_json::from_slice(line).map_err(|e| {
                        hostile(
                            path,
                            &format!(
                                "MANIFEST.jsonl line {} is not a manifest record: {e}",
                                n + 1
                            ),
                        )
                    })?;
                    manifest.insert(record.id, record);
                }
            }
            Member::Sums => {} // the same checks are made on every message below
            Member::Message(id) => {
                if Digest::of(&bytes) != id {
                    return Err(ImportError::TarDamaged {
                        path: path.to_path_buf(),
                        member: shown,
                    });
                }
                let record = manifest
                    .get(&id)
                    .ok_or_else(|| ImportError::TarInconsistent {
                        path: path.to_path_buf(),
                        what: format!("member {shown:?} is not in MANIFEST.jsonl"),
                    })?;
                batch_bytes += bytes.len() as u64;
                for source in &record.sources {
                    batch.push(Incoming {
                        raw: bytes.clone(),
                        source: source.clone(),
                        flags: record.flags.clone(),
                        first_seen: record.first_seen,
                    });
                }
                if batch_bytes >= BATCH_BYTES {
                    super::add_counted(writer, std::mem::take(&mut batch), report, progress)?;
                    batch_bytes = 0;
                }
            }
        }
    }
    super::add_counted(writer, std::mem::take(&mut batch), report, progress)?;
    Ok(())
}
