//! Exit statuses, named in one place (the man page's EXIT STATUS lists the same).

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done (a backup with nothing new is success).
    Ok = 0,
    /// An error stopped the command: bad input, unreadable file, full disk, refused login...
    Error = 1,
    /// The command line was wrong (clap's usage errors also exit 2).
    Usage = 2,
    /// Damage was found: `verify` named damaged messages, or `restore` skipped some.
    Damaged = 3,
    /// Some accounts or messages failed while others succeeded.
    Partial = 4,
    /// Another popvault holds the archive's writer lock.
    Locked = 5,
    /// `status --max-age`: the last successful backup is too old.
    Stale = 6,
    /// Stopped by SIGTERM or SIGINT at a message boundary: what was done is committed and
    /// valid; running the command again continues.
    Interrupted = 7,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
