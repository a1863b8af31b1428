//! Encryption at rest (format version 2): what an encrypted archive holds, and the keys that
//! open and write it.
//!
//! An encrypted archive has an **archive key**, an age X25519 key pair made by `init`. Every
//! pack and catalog segment is an age file encrypted to its public half, which the header
//! holds, so a writer needs no secret to add mail. Its secret half is age-encrypted to the
//! user's recipients (`keys/archive-key.age`) and, when there is a passphrase, alone to it
//! (`keys/archive-key.passphrase.age`: age puts no other recipient beside a passphrase). A
//! reader unwraps it once per command, so a passphrase costs one scrypt however many files.
//!
//! age does not authenticate who encrypted a file: anyone holding the public key can make one.
//! So every commit record is signed by a **writer key** (ed25519) made by `init` and kept on
//! the host that writes (`<writer keys>/<fingerprint>.key`), whose public half is in the header;
//! readers refuse a record without a good signature. A record names its segment by SHA-256 and
//! the segment names each message by the SHA-256 of its bytes, so the signature covers every
//! message.
//!
//! Invariants: outside age files an encrypted archive names no message (no address, subject,
//! date, and no plaintext SHA-256: file names hold the SHA-256 of the ciphertext). A host
//! without an identity keeps, in its own cache, the catalog lines it wrote with every envelope
//! field left out (ids, sizes, sources, where the bytes are): what it needs to recognise mail it
//! already archived.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use age::secrecy::{ExposeSecret, SecretString};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// The format version of an encrypted archive (a plain one stays at version 1, readable by
/// every popvault).
pub const ENCRYPTED_VERSION: u32 = 2;
pub const KEYS_DIR: &str = "keys";
pub const RECIPIENTS_KEY_FILE: &str = "archive-key.age";
pub const PASSPHRASE_KEY_FILE: &str = "archive-key.passphrase.age";
/// What a commit record's signature covers, before the record's bytes: a signature made for
/// something else is never taken for one of a record.
const SIGNATURE_CONTEXT: &[u8] = b"popvault commit record v2\n";
const SIGNATURE_FIELD: &str = ",\n  \"signature\": \"";

/// The header's `encryption` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age`: packs and segments are age files (X25519 to `archive_key`).
    pub scheme: String,
    /// The archive key's public half (`age1...`).
    pub archive_key: String,
    /// The recipients given to `init` (age or SSH public keys): who can unwrap the archive key.
    pub recipients: Vec<String>,
    /// Whether a passphrase can unwrap it too.
    #[serde(default)]
    pub passphrase: bool,
    /// The writer key's public half (64 hex digits): it signs every commit record.
    pub writer_key: String,
}

impl Encryption {
    /// The writer key's file name on a writing host: its first 16 hex digits.
    pub fn writer_key_file(&self) -> String {
        format!("{}.key", &self.writer_key[..16.min(self.writer_key.len())])
    }

    /// The kinds of key that open it, for messages ("an age identity or SSH private key, or
    /// the passphrase").
    fn key_kinds(&self) -> String {
        let mut kinds = Vec::new();
        if !self.recipients.is_empty() {
            let ssh = self.recipients.iter().any(|r| r.starts_with("ssh-"));
            let age = self.recipients.iter().any(|r| r.starts_with("age1"));
            kinds.push(match (age, ssh) {
                (true, true) => "an age identity file or SSH private key (--identity FILE or $POPVAULT_IDENTITY)",
                (false, true) => "the SSH private key of one of its recipients (--identity FILE or $POPVAULT_IDENTITY)",
                _ => "an age identity file (--identity FILE or $POPVAULT_IDENTITY)",
            });
        }
        if self.passphrase {
            kinds.push(
                "its passphrase (asked on a terminal, or `passphrase_command` in the config)",
            );
        }
        if kinds.is_empty() {
            return "an identity (--identity FILE or $POPVAULT_IDENTITY)".into();
        }
        kinds.join(", or ")
    }

    /// Checks what the header says before anything relies on it: the scheme, the archive key
    /// and the writer key (64 hex digits: it becomes a file name).
    pub fn check(&self) -> Result<(), String> {
        if self.scheme != "age" {
            return Err(format!(
                "its encryption scheme {:?} is not one this popvault knows",
                self.scheme
            ));
        }
        if self.archive_key.parse::<age::x25519::Recipient>().is_err() {
            return Err("its archive key is not an age public key".into());
        }
        if self.writer_key.len() != 64 || !self.writer_key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("its writer key is not 64 hex digits".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the archive at {archive} is encrypted and this command reads it: give {kinds}")]
    NeedsIdentity { archive: String, kinds: String },
    #[error("this key cannot open this archive ({archive}): {tried} is not one of its recipients")]
    WrongKey { archive: String, tried: String },
    #[error("cannot use {what}: {reason}")]
    BadKey { what: String, reason: String },
    #[error(
        "this host does not hold the writer key of the encrypted archive at {archive} ({path}): write to it from the machine where `init` made it, or copy that file here (mode 0600)"
    )]
    NoWriterKey { archive: String, path: PathBuf },
    #[error(
        "this host's cache lacks commit {commit} of the encrypted archive at {archive} (written elsewhere, or the cache was deleted): run this command with an identity that opens this archive (--identity){given}, so that popvault can read what is archived"
    )]
    NoHostCache {
        archive: String,
        commit: u64,
        given: &'static str,
    },
    #[error("{what} cannot be decrypted: {reason}")]
    Undecryptable { what: String, reason: String },
    #[error(
        "{path} is damaged ({reason}): the archive key cannot be unwrapped from it; put back this file from another copy of the archive (`popvault copy` makes one)"
    )]
    DamagedKeyFile { path: String, reason: String },
}

/// How this process may open encrypted archives: set once by the CLI before any archive is
/// read (the library reads no environment).
#[derive(Default)]
pub struct Access {
    /// Identity files (age identities, SSH private keys), tried in order.
    pub identity_files: Vec<PathBuf>,
    /// Asked for the passphrase when the archive has one and no identity file opens it.
    pub passphrase: Option<Box<dyn Fn() -> Result<String, String> + Send + Sync>>,
    /// Where this host keeps, per encrypted archive, what a writer without identity needs
    /// (`$XDG_CACHE_HOME/popvault/sealed`).
    pub cache_dir: PathBuf,
    /// Where writer keys are kept (`$XDG_CONFIG_HOME/popvault/writer-keys`).
    pub writer_keys_dir: PathBuf,
}

static ACCESS: OnceLock<Access> = OnceLock::new();
static SEALED: OnceLock<Mutex<HashMap<PathBuf, Option<Arc<Sealed>>>>> = OnceLock::new();

/// Sets how encrypted archives are opened (once; later calls are ignored).
pub fn set_access(access: Access) {
    let _ = ACCESS.set(access);
}

fn access() -> &'static Access {
    ACCESS.get_or_init(Access::default)
}

/// The encryption of the archive at `root`, `None` when it is plain. Read from its header once
/// per process.
pub fn sealed(root: &Path) -> Result<Option<Arc<Sealed>>, super::ArchiveError> {
    let map = SEALED.get_or_init(Default::default);
    if let Some(known) = map.lock().unwrap_or_else(|e| e.into_inner()).get(root) {
        return Ok(known.clone());
    }
    let found = super::store::read_encryption(root)?.map(|encryption| {
        Arc::new(Sealed {
            root: root.to_path_buf(),
            encryption,
            identity: OnceLock::new(),
        })
    });
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(root.to_path_buf(), found.clone());
    Ok(found)
}

/// An encrypted archive's keys, as far as this process has them.
pub struct Sealed {
    root: PathBuf,
    encryption: Encryption,
    /// The archive key's secret half, unwrapped on first need.
    identity: OnceLock<Result<age::x25519::Identity, String>>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").field("root", &self.root).finish()
    }
}

impl Sealed {
    pub fn encryption(&self) -> &Encryption {
        &self.encryption
    }

    fn archive_label(&self) -> String {
        self.root.display().to_string()
    }

    fn recipient(&self) -> Result<age::x25519::Recipient, CryptoError> {
        self.encryption
            .archive_key
            .parse()
            .map_err(|e: &str| CryptoError::BadKey {
                what: "the archive key in the header".into(),
                reason: e.into(),
            })
    }

    /// Whether this process was given a key to try (it may still be the wrong one).
    pub fn has_identity(&self) -> bool {
        !access().identity_files.is_empty()
            || (self.encryption.passphrase && access().passphrase.is_some())
    }

    /// Whether the keys this process was given open this archive (the catalog can be read,
    /// rather than this host's envelope-less copy of what it wrote).
    pub fn can_decrypt(&self) -> bool {
        self.has_identity() && self.identity().is_ok()
    }

    /// The archive key's secret half: unwrapped with the identities (or the passphrase) given.
    fn identity(&self) -> Result<&age::x25519::Identity, CryptoError> {
        let got = self.identity.get_or_init(|| self.unwrap_archive_key());
        got.as_ref().map_err(|e| match e.split_once('\u{0}') {
            Some(("needs", kinds)) => CryptoError::NeedsIdentity {
                archive: self.archive_label(),
                kinds: kinds.into(),
            },
            Some(("wrong", tried)) => CryptoError::WrongKey {
                archive: self.archive_label(),
                tried: tried.into(),
            },
            Some(("damaged", path_reason)) => {
                let (path, reason) = path_reason.split_once('\u{0}').unwrap_or((path_reason, ""));
                CryptoError::DamagedKeyFile {
                    path: path.into(),
                    reason: reason.into(),
                }
            }
            _ => CryptoError::BadKey {
                what: "the identity".into(),
                reason: e.clone(),
            },
        })
    }

    /// Errors are kept as text (an unwrap is tried once per process): `needs\0kinds`,
    /// `wrong\0what was tried`, `damaged\0path\0why`, or a reason.
    fn unwrap_archive_key(&self) -> Result<age::x25519::Identity, String> {
        let access = access();
        let keys = self.root.join(KEYS_DIR);
        let mut tried = Vec::new();
        if !access.identity_files.is_empty() {
            let mut identities = Vec::new();
            for path in &access.identity_files {
                identities.extend(read_identity_file(path).map_err(|e| e.to_string())?);
                tried.push(path.display().to_string());
            }
            let bytes = fs::read(keys.join(RECIPIENTS_KEY_FILE)).map_err(|e| {
                format!(
                    "cannot read {}: {e}",
                    keys.join(RECIPIENTS_KEY_FILE).display()
                )
            })?;
            match decrypt_with(
                &bytes,
                identities.iter().map(|i| i.as_ref() as &dyn age::Identity),
            ) {
                Ok(secret) => return parse_archive_key(&secret).and_then(|i| self.matching(i)),
                Err(age::DecryptError::NoMatchingKeys) => {}
                Err(e) => {
                    let path = keys.join(RECIPIENTS_KEY_FILE);
                    return Err(format!("damaged\0{}\0{e}", path.display()));
                }
            }
        }
        if self.encryption.passphrase
            && let Some(ask) = &access.passphrase
        {
            let passphrase = ask()?;
            let bytes = fs::read(keys.join(PASSPHRASE_KEY_FILE)).map_err(|e| {
                format!(
                    "cannot read {}: {e}",
                    keys.join(PASSPHRASE_KEY_FILE).display()
                )
            })?;
            let identity = age::scrypt::Identity::new(SecretString::from(passphrase));
            match decrypt_with(&bytes, std::iter::once(&identity as &dyn age::Identity)) {
                Ok(secret) => return parse_archive_key(&secret).and_then(|i| self.matching(i)),
                Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => {
                    tried.push("the passphrase".into())
                }
                Err(e) => {
                    let path = keys.join(PASSPHRASE_KEY_FILE);
                    return Err(format!("damaged\0{}\0{e}", path.display()));
                }
            }
        }
        if tried.is_empty() {
            Err(format!("needs\0{}", self.encryption.key_kinds()))
        } else {
            Err(format!("wrong\0{}", tried.join(" and ")))
        }
    }

    /// What is wrong with the key files the header promises (`keys/archive-key*.age`): missing,
    /// or not an age file. What they wrap is checked only by unwrapping it, with an identity.
    pub fn key_file_problems(&self) -> Vec<String> {
        let mut files = Vec::new();
        if !self.encryption.recipients.is_empty() {
            files.push(RECIPIENTS_KEY_FILE);
        }
        if self.encryption.passphrase {
            files.push(PASSPHRASE_KEY_FILE);
        }
        let mut problems = Vec::new();
        for name in files {
            let path = self.root.join(KEYS_DIR).join(name);
            let problem = match fs::read(&path) {
                Err(e) => Some(format!("cannot read it: {e}")),
                Ok(bytes) => age::Decryptor::new_buffered(&bytes[..])
                    .err()
                    .map(|e| format!("it is not an age file: {e}")),
            };
            if let Some(problem) = problem {
                problems.push(format!(
                    "key file {KEYS_DIR}/{name}: {problem} (without it the archive key cannot be unwrapped)"
                ));
            }
        }
        problems
    }

    /// Fails unless the archive key can be unwrapped (the identity opens this archive).
    pub fn unlock(&self) -> Result<(), CryptoError> {
        self.identity().map(|_| ())
    }

    /// `plain` as an age file to the archive key.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let bad_key = |e: io::Error| CryptoError::BadKey {
            what: "the archive key".into(),
            reason: e.to_string(),
        };
        let mut writer = self
            .encrypting(Vec::with_capacity(plain.len() + 256))
            .map_err(bad_key)?;
        writer.write_all(plain).map_err(bad_key)?;
        writer.finish().map_err(bad_key)
    }

    /// A writer that turns what is written into `out` as an age file to the archive key; the
    /// file is complete only after `finish()`.
    pub fn encrypting<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let recipient = self.recipient().map_err(io::Error::other)?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        encryptor.wrap_output(out)
    }

    /// Decrypts a whole age file of this archive (`what` names it in errors).
    pub fn decrypt(&self, bytes: &[u8], what: &str) -> Result<Vec<u8>, CryptoError> {
        let identity = self.identity()?;
        decrypt_with(bytes, std::iter::once(identity as &dyn age::Identity)).map_err(|e| {
            CryptoError::Undecryptable {
                what: what.into(),
                reason: e.to_string(),
            }
        })
    }

    /// An age file of this archive opened for reading at any plaintext offset.
    pub fn open_seekable(
        &self,
        file: File,
    ) -> Result<age::stream::StreamReader<BufReader<File>>, CryptoError> {
        let identity = self.identity()?;
        let decryptor = age::Decryptor::new_buffered(BufReader::new(file)).map_err(|e| {
            CryptoError::Undecryptable {
                what: "a pack".into(),
                reason: e.to_string(),
            }
        })?;
        decryptor
            .decrypt(std::iter::once(identity as &dyn age::Identity))
            .map_err(|e| CryptoError::Undecryptable {
                what: "a pack".into(),
                reason: e.to_string(),
            })
    }

    /// Signs a commit record's text (pretty JSON ending in `\n}\n`): the text with a last
    /// `signature` field (hex ed25519 over [`SIGNATURE_CONTEXT`] and the text as it was).
    pub fn sign_record(&self, text: &str) -> Result<String, CryptoError> {
        let key = self.writer_key()?;
        let body = text
            .strip_suffix("\n}\n")
            .expect("a commit record is pretty JSON");
        let signature = key.sign(&[SIGNATURE_CONTEXT, text.as_bytes()].concat());
        Ok(format!(
            "{body}{SIGNATURE_FIELD}{}\"\n}}\n",
            hex::encode(signature.to_bytes())
        ))
    }

    /// Checks a commit record's signature against the header's writer key: the bytes before the
    /// `signature` field, closed again as they were when signed.
    pub fn verify_record(&self, bytes: &[u8]) -> Result<(), String> {
        let key = self.writer_public_key()?;
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8".to_string())?;
        let (body, rest) = text
            .rsplit_once(SIGNATURE_FIELD)
            .ok_or_else(|| "it is not signed".to_string())?;
        let signature = rest
            .strip_suffix("\"\n}\n")
            .and_then(|hex_sig| hex::decode(hex_sig).ok())
            .and_then(|raw| ed25519_dalek::Signature::from_slice(&raw).ok())
            .ok_or_else(|| "its signature is malformed".to_string())?;
        let signed = [SIGNATURE_CONTEXT, body.as_bytes(), b"\n}\n"].concat();
        key.verify(&signed, &signature)
            .map_err(|_| "its signature is not the writer key's".to_string())
    }

    fn writer_public_key(&self) -> Result<VerifyingKey, String> {
        let raw: [u8; 32] = hex::decode(&self.encryption.writer_key)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or("the header's writer key is malformed")?;
        VerifyingKey::from_bytes(&raw).map_err(|_| "the header's writer key is malformed".into())
    }

    fn writer_key(&self) -> Result<SigningKey, CryptoError> {
        let path = access()
            .writer_keys_dir
            .join(self.encryption.writer_key_file());
        let missing = || CryptoError::NoWriterKey {
            archive: self.archive_label(),
            path: path.clone(),
        };
        let text = fs::read_to_string(&path).map_err(|_| missing())?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(missing)?;
        let key = SigningKey::from_bytes(&seed);
        if hex::encode(key.verifying_key().to_bytes()) != self.encryption.writer_key {
            return Err(missing());
        }
        Ok(key)
    }

    /// Checks that this host can write: it holds the writer key.
    pub fn check_writer(&self) -> Result<(), CryptoError> {
        self.writer_key().map(|_| ())
    }

    /// This host's own cache for the archive: the envelope-less catalog lines it wrote.
    pub fn host_cache_dir(&self) -> PathBuf {
        host_dir(&self.root)
    }

    /// Where the catalog lines of commit `commit`, whose encrypted segment has `sha256`, are
    /// kept on this host.
    pub fn host_segment_path(&self, commit: u64, sha256: &Digest) -> PathBuf {
        self.host_cache_dir()
            .join("catalog")
            .join(format!("{commit:08}-{sha256}.jsonl.zst"))
    }

    /// Where this host keeps the sealed fields (accounts, lost messages) of a commit it made,
    /// so that `status` works here without the identity.
    pub fn host_fields_path(&self, commit: u64, segment_sha256: &Digest) -> PathBuf {
        self.host_cache_dir()
            .join("commits")
            .join(format!("{commit:08}-{segment_sha256}.json"))
    }

    /// Writes `bytes` to `path` in this host's cache unless it is there. Best effort: the
    /// cache is rebuilt from the archive by any later run with the identity.
    pub fn keep_host_copy(&self, path: &Path, bytes: &[u8]) {
        if path.exists() {
            return;
        }
        let tmp = self.host_cache_dir().join("tmp");
        let made = fs::create_dir_all(super::durable::parent_dir(path))
            .and_then(|()| fs::create_dir_all(&tmp))
            .and_then(|()| super::durable::write_once(&tmp, path, bytes));
        if made.is_err() {
            let _ = fs::remove_file(path);
        }
    }

    pub fn no_host_cache(&self, commit: u64) -> CryptoError {
        CryptoError::NoHostCache {
            archive: self.archive_label(),
            commit,
            given: if self.has_identity() {
                "; the one given does not"
            } else {
                ""
            },
        }
    }

    /// `value` as JSON, age-encrypted to the archive key, in base64 (for commit record fields
    /// that would name accounts or messages).
    pub fn seal_json<T: Serialize>(&self, value: &T) -> Result<String, CryptoError> {
        let text = serde_json::to_vec(value).expect("serializes");
        Ok(base64::engine::general_purpose::STANDARD.encode(self.encrypt(&text)?))
    }

    pub fn open_json<T: for<'de> Deserialize<'de>>(&self, sealed: &str) -> Result<T, CryptoError> {
        let bad = |reason: String| CryptoError::Undecryptable {
            what: "a commit record's sealed fields".into(),
            reason,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| bad(e.to_string()))?;
        let plain = self.decrypt(&bytes, "a commit record's sealed fields")?;
        serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))
    }
}

/// This host's cache directory for the archive at `root` (by its canonical path).
fn host_dir(root: &Path) -> PathBuf {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let key = Digest::of(root.as_os_str().as_encoded_bytes()).to_string();
    access().cache_dir.join(&key[..24])
}

const PIN_FILE: &str = "header-encryption.json";

/// On a writing host: the header's encryption must be what it was when this host first wrote
/// (or made) the archive. A header rewritten to another archive key, or to a plain archive,
/// would have new mail written to someone else's key, or in the clear.
pub fn check_pin(root: &Path, encryption: Option<&Encryption>) -> Result<(), super::ArchiveError> {
    if access().cache_dir.as_os_str().is_empty() {
        return Ok(());
    }
    let path = host_dir(root).join(PIN_FILE);
    let changed = |what: &str| super::ArchiveError::BadHeader {
        path: root.join(super::store::HEADER_FILE),
        reason: format!(
            "{what} since this host last wrote to it: someone changed the header; nothing was written (restore the header from a copy, or delete {} if you made a new archive here yourself)",
            path.display()
        ),
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let pinned: Option<Encryption> = serde_json::from_slice(&bytes).ok();
            match (pinned, encryption) {
                (Some(p), Some(e)) if &p == e => Ok(()),
                (Some(_), None) => Err(changed(
                    "it says the archive is plain, but it was encrypted",
                )),
                (_, _) => Err(changed("its encryption keys changed")),
            }
        }
        Err(_) => match encryption {
            Some(e) => pin(root, e),
            None => Ok(()),
        },
    }
}

/// Records the header's encryption as this host's pin (a new archive made here).
pub fn pin(root: &Path, encryption: &Encryption) -> Result<(), super::ArchiveError> {
    if access().cache_dir.as_os_str().is_empty() {
        return Ok(());
    }
    let dir = host_dir(root);
    fs::create_dir_all(&dir).map_err(super::ArchiveError::io(&dir))?;
    let path = dir.join(PIN_FILE);
    let text = serde_json::to_vec(encryption).expect("serializes");
    let tmp = dir.join(format!("{PIN_FILE}.tmp"));
    fs::write(&tmp, &text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(super::ArchiveError::io(&path))
}

fn decrypt_with<'a>(
    bytes: &[u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
) -> Result<Vec<u8>, age::DecryptError> {
    let decryptor = age::Decryptor::new_buffered(bytes)?;
    let mut reader = decryptor.decrypt(identities)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

fn parse_archive_key(secret: &[u8]) -> Result<age::x25519::Identity, String> {
    std::str::from_utf8(secret)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")))
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| "the archive key file does not hold an age identity".into())
}

impl Sealed {
    /// The unwrapped archive key must be the one the header names: a header changed to
    /// another key would have new mail encrypted to someone else.
    fn matching(&self, identity: age::x25519::Identity) -> Result<age::x25519::Identity, String> {
        if identity.to_public().to_string() != self.encryption.archive_key {
            return Err(format!(
                "the header of {} names another archive key than keys/ holds: the header was changed; do not write to this archive, and restore the header from a copy",
                self.root.display()
            ));
        }
        Ok(identity)
    }
}

/// The identities in an age identity file (as `age-keygen` writes it) or an SSH private key.
pub fn read_identity_file(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, CryptoError> {
    let bad = |reason: String| CryptoError::BadKey {
        what: format!("identity file {}", path.display()),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        let identity =
            age::ssh::Identity::from_buffer(text.as_bytes(), Some(path.display().to_string()))
                .map_err(|e| bad(e.to_string()))?;
        return match identity {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(identity)]),
            age::ssh::Identity::Encrypted(_) => Err(bad(
                "it is a passphrase-protected SSH key; give an unprotected copy (ssh-keygen -p -N '' -f COPY)".into(),
            )),
            age::ssh::Identity::Unsupported(_) => Err(bad("this kind of SSH key is not supported (use ed25519 or RSA)".into())),
        };
    }
    let file = age::IdentityFile::from_buffer(text.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let identities: Vec<Box<dyn age::Identity>> = file
        .into_identities()
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|i| i as Box<dyn age::Identity>)
        .collect();
    if identities.is_empty() {
        return Err(bad(
            "it holds no age identity (AGE-SECRET-KEY-1...) or SSH private key".into(),
        ));
    }
    Ok(identities)
}

/// Parses recipients as `age -r` and `age -R` read them: `age1...` and `ssh-ed25519`/`ssh-rsa`
/// public keys, one per line in a file (blank lines and `#` comments skipped).
pub fn parse_recipients(given: &[String], files: &[PathBuf]) -> Result<Vec<String>, CryptoError> {
    let mut out = Vec::new();
    let mut add = |line: &str, what: &str| -> Result<(), CryptoError> {
        let line = line.trim();
        let ok = if line.starts_with("age1") {
            line.parse::<age::x25519::Recipient>().is_ok()
        } else {
            line.parse::<age::ssh::Recipient>().is_ok()
        };
        if line.starts_with("AGE-SECRET-KEY-") || line.starts_with("-----BEGIN") {
            return Err(CryptoError::BadKey {
                what: what.into(),
                reason: "it holds a secret key, not a public one: give its public key (age-keygen -y FILE, or the .pub file of an SSH key)".into(),
            });
        }
        if !ok {
            return Err(CryptoError::BadKey {
                what: what.into(),
                reason: format!(
                    "{:?} is not an age (age1...) or SSH (ssh-ed25519, ssh-rsa) public key",
                    line.chars().take(40).collect::<String>()
                ),
            });
        }
        if !out.iter().any(|r: &String| r == line) {
            out.push(line.to_string());
        }
        Ok(())
    };
    for r in given {
        add(r, "--recipient")?;
    }
    for path in files {
        let text = fs::read_to_string(path).map_err(|e| CryptoError::BadKey {
            what: format!("recipients file {}", path.display()),
            reason: e.to_string(),
        })?;
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            add(line, &format!("recipients file {}", path.display()))?;
        }
    }
    Ok(out)
}

/// What `init --encrypt` makes: the header's `encryption`, the files of `keys/`, and the
/// writer key's secret (to keep in the writer keys directory).
pub struct NewKeys {
    pub encryption: Encryption,
    pub key_files: Vec<(String, Vec<u8>)>,
    pub writer_secret_hex: String,
}

pub fn new_keys(recipients: &[String], passphrase: Option<String>) -> Result<NewKeys, CryptoError> {
    let bad = |e: &dyn std::fmt::Display| CryptoError::BadKey {
        what: "the new archive key".into(),
        reason: e.to_string(),
    };
    let archive_key = age::x25519::Identity::generate();
    let secret = archive_key.to_string();
    let secret = format!(
        "# popvault archive key: every pack and segment of the archive is encrypted to it\n{}\n",
        secret.expose_secret()
    );
    let mut key_files = Vec::new();
    if !recipients.is_empty() {
        let parsed: Vec<Box<dyn age::Recipient>> = recipients
            .iter()
            .map(|r| -> Box<dyn age::Recipient> {
                if r.starts_with("age1") {
                    Box::new(
                        r.parse::<age::x25519::Recipient>()
                            .expect("checked by parse_recipients"),
                    )
                } else {
                    Box::new(
                        r.parse::<age::ssh::Recipient>()
                            .expect("checked by parse_recipients"),
                    )
                }
            })
            .collect();
        let encryptor = age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref()))
            .map_err(|e| bad(&e))?;
        key_files.push((
            RECIPIENTS_KEY_FILE.to_string(),
            encrypt_all(encryptor, secret.as_bytes()).map_err(|e| bad(&e))?,
        ));
    }
    if let Some(passphrase) = &passphrase {
        let encryptor =
            age::Encryptor::with_user_passphrase(SecretString::from(passphrase.clone()));
        key_files.push((
            PASSPHRASE_KEY_FILE.to_string(),
            encrypt_all(encryptor, secret.as_bytes()).map_err(|e| bad(&e))?,
        ));
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| bad(&e))?;
    let writer = SigningKey::from_bytes(&seed);
    Ok(NewKeys {
        encryption: Encryption {
            scheme: "age".into(),
            archive_key: archive_key.to_public().to_string(),
            recipients: recipients.to_vec(),
            passphrase: passphrase.is_some(),
            writer_key: hex::encode(writer.verifying_key().to_bytes()),
        },
        key_files,
        writer_secret_hex: hex::encode(seed),
    })
}

fn encrypt_all(encryptor: age::Encryptor, plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out)?;
    writer.write_all(plain)?;
    writer.finish()?;
    Ok(out)
}

/// Writes a writer key's secret where writers of this host look for it (mode 0600).
pub fn store_writer_key(encryption: &Encryption, secret_hex: &str) -> Result<PathBuf, CryptoError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = &access().writer_keys_dir;
    let path = dir.join(encryption.writer_key_file());
    let failed = |e: io::Error| CryptoError::BadKey {
        what: format!("writer key file {}", path.display()),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    file.write_all(format!("{secret_hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    Ok(path)
}

/// The plaintext of a file of the archive at `root` (a pack or segment), as far as it can be
/// read: for an encrypted archive, the chunks before the first that fails to decrypt (what
/// `repair` can salvage). A missing identity is an error.
pub fn read_salvageable(root: &Path, path: &Path) -> Result<Vec<u8>, super::ArchiveError> {
    let file = File::open(path).map_err(super::ArchiveError::io(path))?;
    let Some(sealed) = sealed(root)? else {
        let mut bytes = Vec::new();
        BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(super::ArchiveError::io(path))?;
        return Ok(bytes);
    };
    sealed.unlock()?;
    // A chunk that does not decrypt (a flipped byte, or bytes missing) becomes zeros, and the
    // reading goes on with the next chunk (see [`SealedFile`]).
    let limit = file
        .metadata()
        .map_err(super::ArchiveError::io(path))?
        .len();
    let mut out = Vec::new();
    let Ok(mut reader) = PackFile::open_path(root, path.to_path_buf()) else {
        return Ok(out);
    };
    let mut buf = vec![0u8; AGE_CHUNK];
    while (out.len() as u64) < limit {
        if reader.seek(SeekFrom::Start(out.len() as u64)).is_err() {
            // The chunk to start at is itself damaged.
            zero_to_next_chunk(&mut out);
            continue;
        }
        let failed = loop {
            match reader.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        match failed {
            None => break,
            // Nothing follows a truncation.
            Some(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Some(_) => zero_to_next_chunk(&mut out),
        }
    }
    Ok(out)
}

/// Stands zeros in for the rest of the chunk `out` ends in (or the whole next one).
fn zero_to_next_chunk(out: &mut Vec<u8>) {
    out.resize((out.len() / AGE_CHUNK + 1) * AGE_CHUNK, 0);
}

/// The plaintext size of one age STREAM chunk (each is authenticated on its own).
const AGE_CHUNK: usize = 64 << 10;

/// A pack opened for reading: the file itself, or an age file decrypted as it is read. Both
/// read and seek in the pack's plaintext.
pub enum PackFile {
    Plain(File),
    Sealed(Box<SealedFile>),
}

/// An age file read at any plaintext offset. A chunk that does not decrypt fails its read, and
/// the next seek starts a fresh reader: the age reader keeps the failed chunk's bytes and would
/// fail every later chunk too, while each chunk is authenticated alone, so those after the
/// damage are still the file's own.
pub struct SealedFile {
    sealed: Arc<Sealed>,
    path: PathBuf,
    reader: age::stream::StreamReader<BufReader<File>>,
    failed: bool,
}

impl SealedFile {
    fn open(sealed: Arc<Sealed>, path: PathBuf) -> io::Result<SealedFile> {
        let reader = sealed
            .open_seekable(File::open(&path)?)
            .map_err(io::Error::other)?;
        Ok(SealedFile {
            sealed,
            path,
            reader,
            failed: false,
        })
    }

    fn noting_failure<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        self.failed |= result.is_err();
        result
    }
}

impl Read for SealedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.reader.read(buf);
        self.noting_failure(read)
    }
}

impl Seek for SealedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        if self.failed {
            let here = self.reader.stream_position();
            *self = SealedFile::open(self.sealed.clone(), self.path.clone())?;
            if let (SeekFrom::Current(_), Ok(here)) = (pos, here) {
                self.reader.seek(SeekFrom::Start(here))?;
            }
        }
        let moved = self.reader.seek(pos);
        self.noting_failure(moved)
    }
}

impl PackFile {
    /// Opens `root/packs/name`, decrypting when the archive is encrypted.
    pub fn open(root: &Path, name: &str) -> io::Result<PackFile> {
        PackFile::open_path(root, root.join("packs").join(name))
    }

    /// Opens the archive file at `path` (a pack, or a catalog segment), decrypting when the
    /// archive at `root` is encrypted.
    pub fn open_path(root: &Path, path: PathBuf) -> io::Result<PackFile> {
        match sealed(root).map_err(io::Error::other)? {
            None => Ok(PackFile::Plain(File::open(path)?)),
            Some(sealed) => Ok(PackFile::Sealed(Box::new(SealedFile::open(sealed, path)?))),
        }
    }

    /// The length of the plaintext.
    pub fn plaintext_len(&mut self) -> io::Result<u64> {
        match self {
            PackFile::Plain(file) => Ok(file.metadata()?.len()),
            PackFile::Sealed(reader) => {
                let here = reader.stream_position()?;
                let len = reader.seek(SeekFrom::End(0))?;
                reader.seek(SeekFrom::Start(here))?;
                Ok(len)
            }
        }
    }
}

impl Read for PackFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PackFile::Plain(file) => file.read(buf),
            PackFile::Sealed(reader) => reader.read(buf),
        }
    }
}

impl Seek for PackFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            PackFile::Plain(file) => file.seek(pos),
            PackFile::Sealed(reader) => reader.seek(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_record_verifies_and_any_change_does_not() {
        let keys = new_keys(
            &[age::x25519::Identity::generate().to_public().to_string()],
            None,
        )
        .unwrap();
        let sealed = Sealed {
            root: PathBuf::from("/nonexistent"),
            encryption: keys.encryption.clone(),
            identity: OnceLock::new(),
        };
        let seed: [u8; 32] = hex::decode(&keys.writer_secret_hex)
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_bytes(&seed);
        let text = "{\n  \"commit\": 1\n}\n";
        let signature = key.sign(&[SIGNATURE_CONTEXT, text.as_bytes()].concat());
        let signed = format!(
            "{{\n  \"commit\": 1{SIGNATURE_FIELD}{}\"\n}}\n",
            hex::encode(signature.to_bytes())
        );
        assert_eq!(sealed.verify_record(signed.as_bytes()), Ok(()));
        let forged = signed.replace("\"commit\": 1", "\"commit\": 2");
        assert!(sealed.verify_record(forged.as_bytes()).is_err());
        assert!(sealed.verify_record(text.as_bytes()).is_err());
        let v: serde_json::Value = serde_json::from_str(&signed).unwrap();
        assert_eq!(v["commit"], 1);
    }
}
