//! popvault: a safe, verifiable copy of a POP3 mailbox.
//!
//! The map, bottom up:
//! - [`net`]: what the POP3 and IMAP clients share: TCP, implicit TLS or a STLS/STARTTLS upgrade
//!   (rustls) with its trust rules, secrets that never print, SASL encodings, server URLs.
//! - [`pop3`]: our POP3 client. A sans-IO codec ([`pop3::codec`]) parses replies out of bytes;
//!   [`pop3::Session`] drives a socket, and only a login turns `Session<Authorization>` into
//!   `Session<Transaction>`.
//! - [`imap`]: our IMAP client (an RFC 3501 subset: login methods, folders, APPEND with LITERAL+
//!   and MULTIAPPEND), shared by restore and forward.
//! - [`archive`]: the content-addressed store. Messages are zstd frames in packs
//!   ([`archive::pack`]), listed by an append-only catalog ([`archive::catalog`]), made visible by
//!   commit records. There is one [`archive::Writer`] (kernel lock, batched commits, crash seam in
//!   [`archive::durable`]), read-only [`archive::Archive`] views, and [`archive::verify`].
//! - [`import`] (Maildir, mbox, eml, export tars), [`backup`] (POP3 → archive) and [`restore`]
//!   (archive → Maildir, mbox, IMAP) join them; [`export`] writes portable tars; [`repair`] salvages
//!   damage; [`copy`] brings one archive's messages into another; [`forward`] delivers each new
//!   POP3 message to an IMAP folder exactly once (a backup pass, then a journaled restore); [`probe`] asks a server what
//!   it offers. [`archive::remote`] keeps an archive on S3-compatible storage through a local
//!   mirror.
//! - [`cli`]: the only module that prints, reads the environment or picks exit codes.
//!   [`config`] and [`account`] turn the config file and URLs into accounts.
//!
//! One backup: `cli` resolves accounts and passwords. [`backup::backup_account`] then logs in,
//! lists (LIST, UIDL), plans the UIDLs not yet archived, and RETRs them pipelined. One thread
//! receives while another hashes, compresses and appends to a pack. The writer commits in
//! batches: pack, then segment, then commit record. Only then are DELEs sent for old, re-verified
//! messages, and QUIT applies them.
//!
//! One restore: [`restore::restore`] selects messages and asks the destination ([`restore::Sink`])
//! which ones it already holds. It reads and re-hashes the rest on all cores and puts them: Maildir
//! files synced then renamed, mboxrd, or IMAP APPEND (LITERAL+ and MULTIAPPEND).
//!
//! The dependency rule: `pop3` and `archive` know nothing of each other nor of the CLI; `backup`,
//! `restore`, `import`, `export` and `repair` join them; only `cli` talks to the user.
pub mod account;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod config;
pub mod copy;
pub mod export;
pub mod forward;
pub mod imap;
pub mod import;
pub mod net;
pub mod pop3;
pub mod probe;
pub mod restore;
pub mod stop;

/// An error and its causes as one line, "what: cause: cause", leaving out a cause whose text
/// the line already holds. For reports that carry errors as text (no error type of this crate
/// holds a secret).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
