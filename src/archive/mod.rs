//! The archive: a directory of immutable, content-addressed packs, a catalog of what was seen
//! where, and commit records that make each batch of writes visible at once.
//!
//! ```text
//! ARCHIVE/popvault-archive.json   format header (version)
//! ARCHIVE/lock                    writer lock (flock)
//! ARCHIVE/packs/<commit>-<sha256>.pack
//! ARCHIVE/catalog/<commit>.jsonl.zst  one JSON line per message seen, zstd frames
//! ARCHIVE/commits/<commit>.json   commit point: names the segment and packs above
//! ARCHIVE/tmp/                    files being written; anything here is uncommitted
//! ARCHIVE/keys/                   encrypted archives: the archive key, wrapped (see `crypto`)
//! ```
//! doc/FORMAT.md describes every byte.

pub mod catalog;
mod compact_map;
pub mod crypto;
pub mod digest;
pub mod durable;
pub mod envelope;
pub mod index;
pub mod local_index;
pub mod lock;
pub mod pack;
pub mod remote;
pub mod repair;
pub mod select;
mod store;
pub mod text;
pub mod verify;
mod writer;

use std::path::PathBuf;

pub use catalog::{Entry, Source};
pub use digest::Digest;
pub use envelope::Envelope;
pub use index::{Index, Location, Pop3Seen};
pub use local_index::{Freshness, IndexError, LocalIndex};
pub use store::{Archive, Message, PackReader, check_header, is_archive};
pub use writer::{Added, Incoming, Writer, WriterTotals};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no archive at {path}")]
    NotFound { path: PathBuf },
    #[error(
        "{path} is not a popvault archive: it is a non-empty directory without popvault-archive.json"
    )]
    NotAnArchive { path: PathBuf },
    #[error("{path} is a file, not an archive: give a directory (new or empty for a new archive)")]
    IsAFile { path: PathBuf },
    #[error("{path} is already a popvault archive")]
    AlreadyAnArchive { path: PathBuf },
    #[error(
        "the archive at {path} has format version {version}; this popvault reads version {supported} and older"
    )]
    TooNew {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("the archive header {path} is damaged: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error(
        "commit {commit} is saved in the local copy of the archive but not uploaded: {reason}; the next run uploads it"
    )]
    NotUploaded { commit: u64, reason: String },
    #[error("another popvault is writing to this archive ({holder}; lock file {path})")]
    Locked { path: PathBuf, holder: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write message {id} out")]
    Output {
        id: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("no message id starts with {prefix:?}")]
    UnknownId { prefix: String },
    #[error("{count} messages have ids starting with {prefix:?}: give more digits")]
    AmbiguousId { prefix: String, count: usize },
    #[error("message {id} is damaged in {pack}: {fault}")]
    DamagedMessage {
        id: Digest,
        pack: String,
        fault: pack::RecordFault,
    },
    #[error(transparent)]
    Seal(#[from] pack::SealError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error(
        "commit record {name} of the encrypted archive at {archive} is refused: {reason}. Only the archive's writer key can make a commit; someone else wrote this one (or it is damaged): move it out of commits/, then run `popvault verify` for the rest"
    )]
    Unsigned {
        archive: String,
        name: String,
        reason: String,
    },
    #[error(
        "a message did not decompress to its own bytes right after compression ({fault}); nothing was written: check memory"
    )]
    SelfCheck { fault: pack::RecordFault },
}

impl ArchiveError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Io { path, source }
    }
}
