//! Archives off the machine: an object store holding an archive's files under the same names
//! as on disk, and the mirror that keeps a local copy of it in step.
//!
//! The store is used as a set of immutable objects: every key is created once, with a
//! create-only write, and never replaced. The only objects ever deleted are this writer's own
//! lock objects. What the store must guarantee is written down in doc/FORMAT.md ("Object
//! storage").

pub mod mirror;
pub mod s3;

use std::io::Write;

pub use mirror::{Mirror, Publisher, RemoteLock};
pub use s3::{S3Config, S3Store, UrlStyle};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The store answered with an error status. `object` is `s3://bucket/key`, never a signed URL.
    #[error("{object}: {operation} refused: HTTP {status}{code}{advice}", code = code_text(code), advice = status_advice(*status, code))]
    Refused {
        object: String,
        operation: &'static str,
        status: u16,
        code: Option<String>,
    },
    #[error("cannot reach the object store at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{object}: {reason}")]
    Damaged { object: String, reason: String },
    #[error("{object} exists with other content than this archive's own copy: {reason}")]
    Conflict { object: String, reason: String },
    #[error("the local copy of the archive: {0}")]
    Local(#[from] super::ArchiveError),
    #[error(
        "the archive at {url} is being written by {holder} (lock object {key}); wait for it to end, or, if it died, run the command again after {stale_after}"
    )]
    Locked {
        url: String,
        holder: String,
        key: String,
        stale_after: String,
    },
    #[error(
        "no archive at {url}: create it with `popvault init --archive {url}`, or by a first backup or import"
    )]
    NotFound { url: String },
    #[error("{url} is not a popvault archive: {reason}")]
    NotAnArchive { url: String, reason: String },
}

fn code_text(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

fn status_advice(status: u16, code: &Option<String>) -> &'static str {
    match (status, code.as_deref()) {
        (_, Some("NoSuchBucket")) => {
            "; the bucket does not exist: `popvault init` creates it, or check the bucket name"
        }
        (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch")) | (401, _) => {
            "; check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        }
        (403, _) => "; the credentials are not allowed to do this: check the bucket's policy",
        (500..=599, _) => "; the store kept failing, retried: try again later",
        _ => "",
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The store's ETag, quotes removed: for an object written in one PUT, the MD5 of its
    /// bytes on AWS and most compatibles.
    pub etag: Option<String>,
}

/// What a mirror needs of an object store. Keys are relative to the archive (`packs/x.pack`).
pub trait ObjectStore: Send + Sync {
    /// `s3://bucket/prefix`, for messages.
    fn url(&self) -> String;
    /// The whole object, or `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// The object streamed into `out`; `false` when there is none.
    fn get_into(&self, key: &str, out: &mut dyn Write) -> Result<bool, RemoteError>;
    /// Creates the object unless one exists under `key`: `true` when this call created it,
    /// `false` when the key was taken (perhaps by an earlier attempt of this very call).
    fn create(&self, key: &str, body: &[u8]) -> Result<bool, RemoteError>;
    /// Every object whose key starts with `prefix` and sorts after `start_after`, in key order.
    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<Listed>, RemoteError>;
    /// Removes an object; used only for this writer's own lock objects.
    fn delete(&self, key: &str) -> Result<(), RemoteError>;
    /// Creates the bucket when it is missing; `false` when it was there.
    fn create_bucket(&self) -> Result<bool, RemoteError>;
    /// Requests sent so far (each retry counts), for benchmarks and `--verbose`.
    fn requests(&self) -> u64;
}
