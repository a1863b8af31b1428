//! Encrypted archives (format version 2): made with keys from Debian's `age-keygen` and
//! `ssh-keygen`, filled from a real Dovecot and from the shared corpus, read back byte for
//! byte with the identity, refused without it, opened with the `age` command alone, and
//! tampered with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::dovecot::Dovecot;
use crate::common::moto::Moto;
use crate::support::{
    Rng, Sandbox, corpus_dir, generated_message, kill_9_after, recovery_script, sha256_hex,
};

/// An age identity made by `age-keygen`; returns (identity file, recipient).
fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen (Debian package age) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    (
        path,
        String::from_utf8(recipient.stdout)
            .unwrap()
            .trim()
            .to_string(),
    )
}

/// An unprotected ed25519 SSH key made by `ssh-keygen`; returns (private key, public key line).
/// A sandbox whose archive is encrypted to a fresh age key; the path of its identity.
fn encrypted_sandbox() -> (Sandbox, PathBuf) {
    let sandbox = Sandbox::new();
    let (identity, recipient) = age_keygen(sandbox.path(), "me.txt");
    sandbox.ok(&["init", "--encrypt", "--recipient", &recipient]);
    (sandbox, identity)
}

fn ssh_keygen(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tester", "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_identity(sandbox: &Sandbox, identity: &Path, args: &[&str]) -> Output {
    let mut full = vec!["--identity", identity.to_str().unwrap()];
    full.extend_from_slice(args);
    sandbox.run(&full)
}

fn ok_with(sandbox: &Sandbox, identity: &Path, args: &[&str]) -> String {
    let out = with_identity(sandbox, identity, args);
    assert!(out.status.success(), "popvault {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// The first of `secrets` (each at least 6 bytes) that `bytes` holds: one pass over the
/// bytes, looking up each 6-byte window.
fn find_secret<'s>(bytes: &[u8], secrets: &'s [Vec<u8>]) -> Option<&'s [u8]> {
    let mut by_prefix: std::collections::HashMap<&[u8], Vec<&[u8]>> = Default::default();
    for s in secrets {
        by_prefix.entry(&s[..6]).or_default().push(s);
    }
    (0..bytes.len().saturating_sub(5)).find_map(|i| {
        by_prefix.get(&bytes[i..i + 6]).and_then(|candidates| {
            candidates
                .iter()
                .find(|s| bytes[i..].starts_with(s))
                .copied()
        })
    })
}

/// Asserts that no byte of the archive shows any of `secrets` (text, or raw bytes).
fn assert_reveals_nothing(archive: &Path, secrets: &[Vec<u8>]) {
    let files = files_under(archive);
    assert!(files.len() > 4, "the archive has its files");
    for (path, bytes) in &files {
        if let Some(secret) = find_secret(bytes, secrets) {
            panic!(
                "{} holds {:?}",
                path.display(),
                String::from_utf8_lossy(secret)
            );
        }
    }
}

/// What must not show for a message: its hex and raw SHA-256, and its envelope as `list` shows
/// it (fields of 6 characters or more: shorter ones occur by chance in any ciphertext).
fn secrets_of(listed: &[serde_json::Value], messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut secrets = Vec::new();
    for m in messages {
        let hex = sha256_hex(m);
        secrets.push(hex.clone().into_bytes());
        secrets.push(hex::decode(&hex).unwrap());
    }
    for m in listed {
        for field in ["subject", "from", "message_id"] {
            if let Some(text) = m[field].as_str().filter(|t| t.len() >= 6) {
                secrets.push(text.as_bytes().to_vec());
            }
        }
    }
    secrets
}

fn restored_maildir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries {
                out.push(sha256_hex(&std::fs::read(e.unwrap().path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_backup_into_an_encrypted_archive_reveals_nothing_and_restores_byte_exact() {
    let dovecot = Dovecot::start();
    let mut rng = Rng(1414);
    let messages: Vec<Vec<u8>> = (0..150)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            dovecot.add_message(&format!("{n:06}.gen"), &m);
            m
        })
        .collect();
    let sandbox = Sandbox::new();
    let (identity, recipient) = age_keygen(sandbox.path(), "me.txt");
    let (_, recovery) = age_keygen(sandbox.path(), "recovery.txt");
    let init = sandbox.ok(&[
        "init",
        "--encrypt",
        "--recipient",
        &recipient,
        "--recipient",
        &recovery,
    ]);
    assert!(init.contains("encrypted archive"), "{init}");
    let url = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    let backup = || {
        sandbox.run_with_password(
            &["backup", &url, "--ca-file", ca.to_str().unwrap()],
            dovecot.password(),
        )
    };
    // The backup host has no identity at all.
    let out = backup();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("150 new messages"));
    let out = backup();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 new messages"),
        "without the identity the writer still knows what it archived: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without the identity: one line saying which archive and which key.
    let id = sha256_hex(&messages[0]);
    let out = sandbox.run(&["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is encrypted") && err.contains("--identity") && err.contains("age identity"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    let (stranger, _) = age_keygen(sandbox.path(), "stranger.txt");
    let out = with_identity(&sandbox, &stranger, &["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this key cannot open this archive"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("corrupt") && !stderr(&out).contains("damaged"));

    // With it: every byte back, from either recipient.
    assert_eq!(
        with_identity(&sandbox, &identity, &["cat", &id]).stdout,
        messages[0]
    );
    let listed: Vec<serde_json::Value> = ok_with(&sandbox, &identity, &["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 150);
    assert!(listed.iter().any(|m| m["subject"] == "message 7"));
    let restored = sandbox.path().join("restored");
    ok_with(
        &sandbox,
        &sandbox.path().join("recovery.txt"),
        &[
            "restore",
            "--to",
            &format!("maildir:{}", restored.display()),
        ],
    );
    let mut expected: Vec<String> = messages.iter().map(|m| sha256_hex(m)).collect();
    expected.sort();
    assert_eq!(restored_maildir(&restored), expected);

    // Nothing in the archive names a message, an address, or the account.
    let mut secrets = secrets_of(&listed, &messages);
    secrets.push(b"alice@example.org".to_vec());
    secrets.push(format!("{}@127.0.0.1", dovecot.user()).into_bytes());
    assert_reveals_nothing(&sandbox.archive(), &secrets);

    let verified = ok_with(&sandbox, &identity, &["verify", "--full"]);
    assert!(
        verified.contains("150 messages") && verified.contains("OK"),
        "{verified}"
    );
    let unkeyed = sandbox.ok(&["verify", "--full"]);
    assert!(
        unkeyed.contains("OK") && unkeyed.contains("not decrypted or re-hashed"),
        "{unkeyed}"
    );
    // The status of the accounts is inside age too, and there for the identity; the backup
    // host, without it, reads what it wrote itself.
    let status = ok_with(&sandbox, &identity, &["status"]);
    assert!(status.contains("150"), "{status}");
    assert_eq!(sandbox.ok(&["status"]), status);
}

#[test]
fn an_encrypted_import_of_the_corpus_reveals_nothing_and_the_age_command_opens_it() {
    let sandbox = Sandbox::new();
    let (identity, recipient) = age_keygen(sandbox.path(), "me.txt");
    let recipients = sandbox.path().join("recipients.txt");
    std::fs::write(&recipients, format!("# mine\n{recipient}\n\n")).unwrap();
    sandbox.ok(&[
        "init",
        "--encrypt",
        "--recipients-file",
        recipients.to_str().unwrap(),
    ]);
    let corpus = corpus_dir();
    let mut sources = Vec::new();
    let mut messages = Vec::new();
    for e in std::fs::read_dir(&corpus).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "eml") {
            messages.push(std::fs::read(&path).unwrap());
            sources.push(format!("eml:{}", path.display()));
        }
    }
    sources.push(format!("mbox:{}", corpus.join("git-sample.mbox").display()));
    let mut args = vec!["import"];
    args.extend(sources.iter().map(String::as_str));
    let out = sandbox.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));

    let listed: Vec<serde_json::Value> = ok_with(&sandbox, &identity, &["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(listed.len() > messages.len(), "the mbox's messages too");
    let mut all: Vec<Vec<u8>> = Vec::new();
    for m in &listed {
        all.push(with_identity(&sandbox, &identity, &["cat", m["id"].as_str().unwrap()]).stdout);
    }
    for m in &messages {
        assert!(all.contains(m), "every message comes back byte for byte");
    }
    let secrets = secrets_of(&listed, &all);
    assert_reveals_nothing(&sandbox.archive(), &secrets);
    // The check finds what a plain archive shows (the ids in its packs' record headers).
    let plain = sandbox.path().join("plain");
    let mut args = vec!["--archive", plain.to_str().unwrap(), "import"];
    args.extend(sources.iter().map(String::as_str));
    sandbox.ok(&args);
    assert!(
        files_under(&plain.join("packs"))
            .iter()
            .any(|(_, bytes)| find_secret(bytes, &secrets).is_some())
    );

    // The age command opens it: the archive key with the identity, then any pack or segment.
    let archive = sandbox.archive();
    let key = sandbox.path().join("archive-key.txt");
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(&identity)
        .arg("-o")
        .arg(&key)
        .arg(archive.join("keys/archive-key.age"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pack = std::fs::read_dir(archive.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(&key)
        .arg(&pack)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.starts_with(b"PVPACK\0\x01"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | zstd -dc",
            key.display(),
            archive.join("catalog/00000001.jsonl.zst").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(listed[0]["id"].as_str().unwrap()));

    // doc/FORMAT.md's recovery script, with python3, zstd and age alone, gets every message.
    let recovered = sandbox.path().join("recovered");
    let out = Command::new("python3")
        .arg(recovery_script(sandbox.path()))
        .arg(&archive)
        .arg(&recovered)
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&recovered).unwrap().count(), listed.len());
    for (m, bytes) in listed.iter().zip(&all) {
        let id = m["id"].as_str().unwrap();
        assert_eq!(
            &std::fs::read(recovered.join(format!("{id}.eml"))).unwrap(),
            bytes
        );
    }
}

#[test]
fn an_ssh_key_a_passphrase_and_the_identity_variable_open_an_encrypted_archive() {
    let sandbox = Sandbox::new();
    let (ssh_private, ssh_public) = ssh_keygen(sandbox.path());
    let config = sandbox.path().join("config.toml");
    std::fs::write(
        &config,
        "passphrase_command = \"printf 'correct horse battery'\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    sandbox.ok(&[
        "--config",
        config,
        "init",
        "--encrypt",
        "--recipient",
        &ssh_public,
        "--passphrase",
    ]);
    let message = std::fs::read(corpus_dir().join("cpython-msg_05.eml")).unwrap();
    let eml = format!("eml:{}", corpus_dir().join("cpython-msg_05.eml").display());
    // The import needs no key (and the passphrase command is not run for it).
    sandbox.ok(&["import", &eml]);
    let id = sha256_hex(&message);
    assert_eq!(
        with_identity(&sandbox, &ssh_private, &["cat", &id]).stdout,
        message
    );
    let by_env = sandbox
        .command()
        .args(["cat", &id])
        .env("POPVAULT_IDENTITY", &ssh_private)
        .output()
        .unwrap();
    assert_eq!(by_env.stdout, message, "{}", stderr(&by_env));
    let by_passphrase = sandbox.run(&["--config", config, "cat", &id]);
    assert_eq!(by_passphrase.stdout, message, "{}", stderr(&by_passphrase));
    let wrong = sandbox.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "passphrase_command = \"printf 'incorrect horse'\"\n",
    )
    .unwrap();
    let out = sandbox.run(&["--config", wrong.to_str().unwrap(), "cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this key cannot open this archive"),
        "{}",
        stderr(&out)
    );
    // Without any: it names the kinds of key that open it.
    let out = sandbox.run(&["cat", &id]);
    assert!(
        stderr(&out).contains("SSH private key") && stderr(&out).contains("passphrase"),
        "{}",
        stderr(&out)
    );
    // Bad keys are refused at init, before anything is made.
    let other = Sandbox::new();
    let out = other.run(&["init", "--encrypt", "--recipient", "age1notakey"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not an age"), "{}", stderr(&out));
    assert!(!other.archive().exists());
    let out = other.run(&["init", "--encrypt"]);
    assert!(stderr(&out).contains("--recipient"), "{}", stderr(&out));
}

/// Flips one byte of `path` at `at` (from the end when negative).
fn flip(path: &Path, at: i64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = if at < 0 { bytes.len() as i64 + at } else { at } as usize;
    bytes[i] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn only_pack(archive: &Path) -> PathBuf {
    let packs: Vec<PathBuf> = std::fs::read_dir(archive.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 1);
    packs[0].clone()
}

#[test]
fn tampering_with_an_encrypted_archive_is_detected_and_named() {
    let (sandbox, identity) = encrypted_sandbox();
    let mbox = format!("mbox:{}", corpus_dir().join("git-sample.mbox").display());
    sandbox.ok(&["import", &mbox]);
    let archive = sandbox.archive();
    let pristine = sandbox.path().join("pristine");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&archive)
            .arg(&pristine)
            .status()
            .unwrap()
            .success()
    );
    let reset = || {
        std::fs::remove_dir_all(&archive).unwrap();
        assert!(
            Command::new("cp")
                .arg("-a")
                .arg(&pristine)
                .arg(&archive)
                .status()
                .unwrap()
                .success()
        );
    };

    // A flipped byte: found without the identity by the pack's SHA-256, with it per message.
    let pack = only_pack(&archive);
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();
    flip(&pack, 3000);
    let out = sandbox.run(&["verify", "--full"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains(&pack_name), "{}", stderr(&out));
    let out = with_identity(&sandbox, &identity, &["verify", "--full"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("damaged message"), "{}", stderr(&out));
    reset();

    // A truncated pack: even the quick check sees it.
    let pack = only_pack(&archive);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = sandbox.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&pack_name) && stderr(&out).contains("bytes"),
        "{}",
        stderr(&out)
    );
    reset();

    // A damaged key file: named by verify without the identity, and "damaged", not "wrong
    // key", to a reader with it.
    let key_file = archive.join("keys").join("archive-key.age");
    std::fs::write(&key_file, b"age-encryption.org/v1\n-> X25519 garbage\n").unwrap();
    let out = sandbox.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keys/archive-key.age"),
        "{}",
        stderr(&out)
    );
    let out = with_identity(&sandbox, &identity, &["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("archive-key.age is damaged"),
        "{}",
        stderr(&out)
    );
    reset();

    // A commit forged with the public key alone: a segment and pack encrypted to the archive
    // key, a record naming them, signed with a key of the forger's own (or not at all).
    let header: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join("popvault-archive.json")).unwrap())
            .unwrap();
    let archive_key = header["encryption"]["archive_key"].as_str().unwrap();
    let forged_line = r#"{"id":"0000000000000000000000000000000000000000000000000000000000000000","size":5,"source":{"kind":"eml","path":"/x"},"first_seen":"2026-01-01T00:00:00Z","subject":"pay me"}"#;
    let segment = sandbox.path().join("forged.jsonl.zst");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '%s\\n' '{forged_line}' | zstd -q | age -r {archive_key} > '{}'",
            segment.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::write(archive.join("catalog/00000002.jsonl.zst"), &bytes).unwrap();
    let record = serde_json::json!({
        "commit": 2, "format": 2, "tool": "forger", "command": "import",
        "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:00Z",
        "segment": {"name": "00000002.jsonl.zst", "size": bytes.len(), "sha256": sha256_hex(&bytes)},
        "packs": [], "entries": 1, "new_objects": 0, "raw_bytes": 0, "stored_bytes": 0,
        "signature": "00".repeat(64),
    });
    std::fs::write(
        archive.join("commits/00000002.json"),
        serde_json::to_string_pretty(&record).unwrap() + "\n",
    )
    .unwrap();
    for args in [&["list"][..], &["verify"][..]] {
        let out = with_identity(&sandbox, &identity, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("00000002.json") && err.contains("refused"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("pay me"));
    }
    // A writer refuses to add to it too, rather than building on a forged commit.
    let out = sandbox.run(&["import", &mbox]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    reset();

    // A header rewritten to another archive key, or to a plain archive: the writing host
    // refuses to add mail to it, and a reader with the identity names the change.
    let header_path = archive.join("popvault-archive.json");
    let original = std::fs::read_to_string(&header_path).unwrap();
    let (_, attacker) = age_keygen(sandbox.path(), "attacker.txt");
    std::fs::write(&header_path, original.replace(archive_key, &attacker)).unwrap();
    let eml = format!("eml:{}", corpus_dir().join("cpython-msg_04.eml").display());
    let out = sandbox.run(&["import", &eml]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("changed the header"),
        "{}",
        stderr(&out)
    );
    let out = with_identity(&sandbox, &identity, &["list"]);
    assert!(
        stderr(&out).contains("header was changed"),
        "{}",
        stderr(&out)
    );
    let mut plain: serde_json::Value = serde_json::from_str(&original).unwrap();
    plain.as_object_mut().unwrap().remove("encryption");
    plain["version"] = 1.into();
    std::fs::write(&header_path, plain.to_string()).unwrap();
    let out = sandbox.run(&["import", &eml]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("plain, but it was encrypted"),
        "{}",
        stderr(&out)
    );
    reset();
    ok_with(&sandbox, &identity, &["verify", "--full"]);
}

#[test]
fn kill_9_mid_backup_into_an_encrypted_archive_then_a_rerun_holds_each_message_once() {
    let dovecot = Dovecot::start();
    let mut rng = Rng(99);
    let messages: Vec<Vec<u8>> = (0..3000)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            dovecot.add_message(&format!("{n:06}.gen"), &m);
            m
        })
        .collect();
    let (sandbox, identity) = encrypted_sandbox();
    let url = format!("pop3://{}@127.0.0.1:{}", dovecot.user(), dovecot.pop3_port);
    let ca = dovecot.ca_pem();
    let args = ["backup", url.as_str(), "--ca-file", ca.to_str().unwrap()];
    let mut killed_mid_run = 0;
    for delay in [150, 400, 700, 1100] {
        let mut command = sandbox.command();
        command
            .args(args)
            .env("POPVAULT_PASSWORD", dovecot.password())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        killed_mid_run += usize::from(kill_9_after(&mut command, delay));
        let out = with_identity(&sandbox, &identity, &["verify"]);
        assert!(
            out.status.success(),
            "verify after kill -9: {}",
            stderr(&out)
        );
    }
    assert!(
        killed_mid_run > 0,
        "no run was interrupted: the test proved nothing"
    );
    let out = sandbox.run_with_password(&args, dovecot.password());
    assert!(out.status.success(), "{}", stderr(&out));
    ok_with(&sandbox, &identity, &["verify", "--full"]);
    let stats: serde_json::Value =
        serde_json::from_str(&ok_with(&sandbox, &identity, &["stats", "--json"])).unwrap();
    assert_eq!(
        stats["messages"], 3000,
        "each message recorded exactly once: {stats}"
    );
    let listed: BTreeMap<String, u64> = ok_with(&sandbox, &identity, &["list", "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["size"].as_u64().unwrap(),
            )
        })
        .collect();
    for m in &messages {
        assert_eq!(listed.get(&sha256_hex(m)), Some(&(m.len() as u64)));
    }
}

#[test]
fn an_encrypted_archive_on_s3_and_copies_into_encrypted_archives() {
    let moto = Moto::start();
    moto.versioned_bucket("pv-enc");
    let sandbox = Sandbox::new();
    let (identity, recipient) = age_keygen(sandbox.path(), "me.txt");
    let (other_identity, other_recipient) = age_keygen(sandbox.path(), "other.txt");
    let s3 = |cache: &str| {
        let mut c = sandbox.command();
        moto.env(&mut c, &moto.endpoint());
        c.env("POPVAULT_ARCHIVE", "s3://pv-enc/mail")
            .env("XDG_CACHE_HOME", sandbox.path().join(cache));
        c
    };
    let run = |mut c: Command, args: &[&str]| {
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "popvault {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    run(
        s3("laptop"),
        &["init", "--encrypt", "--recipient", &recipient],
    );
    let mbox = format!("mbox:{}", corpus_dir().join("git-sample.mbox").display());
    run(s3("laptop"), &["import", &mbox]);

    // A fresh machine with the identity reads it all from the bucket.
    let id = identity.to_str().unwrap();
    let verified = run(s3("fresh"), &["--identity", id, "verify", "--full"]);
    assert!(verified.contains("OK"), "{verified}");
    let listed: Vec<serde_json::Value> = run(s3("fresh"), &["--identity", id, "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!listed.is_empty());
    // ...and without it checks the objects, saying that no message was re-hashed.
    let unkeyed = run(s3("fresh2"), &["verify", "--full"]);
    assert!(unkeyed.contains("not decrypted or re-hashed"), "{unkeyed}");
    // This machine's copy losing its keys/ gets them again from the bucket.
    let copies = sandbox.path().join("fresh/popvault/remote");
    for entry in std::fs::read_dir(&copies).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path().join("archive/keys")).unwrap();
    }
    let listed_again = run(s3("fresh"), &["--identity", id, "list", "--json"]);
    assert_eq!(listed_again.lines().count(), listed.len());
    // Every object of the bucket keeps the mail's secrets.
    let mut all = Vec::new();
    for m in &listed {
        let mut c = s3("fresh");
        all.push(
            c.args(["--identity", id, "cat", m["id"].as_str().unwrap()])
                .output()
                .unwrap()
                .stdout,
        );
    }
    let secrets = secrets_of(&listed, &all);
    // (Lock objects that were deleted are listed among the versions too.)
    for key in moto.objects("pv-enc") {
        let Some(bytes) = moto.get("pv-enc", &key) else {
            continue;
        };
        if let Some(secret) = find_secret(&bytes, &secrets) {
            panic!("{key} holds {:?}", String::from_utf8_lossy(secret));
        }
    }

    // Encrypted to encrypted, with other recipients; plain to encrypted.
    let local = sandbox.path().join("offsite");
    let local_arg = local.to_str().unwrap();
    sandbox.ok(&[
        "--archive",
        local_arg,
        "init",
        "--encrypt",
        "--recipient",
        &other_recipient,
    ]);
    let copied = run(s3("fresh"), &["--identity", id, "copy", "--to", local_arg]);
    assert!(
        copied.contains(&format!("{} messages new", listed.len())),
        "{copied}"
    );
    let again = run(s3("fresh"), &["--identity", id, "copy", "--to", local_arg]);
    assert!(again.contains("0 messages new"), "{again}");
    let plain = sandbox.path().join("plain");
    let plain_arg = plain.to_str().unwrap();
    let eml = format!("eml:{}", corpus_dir().join("cpython-msg_04.eml").display());
    sandbox.ok(&["--archive", plain_arg, "import", &eml]);
    // From the machine that wrote the copy above (its cache knows what the copy holds).
    run(
        s3("fresh"),
        &["--archive", plain_arg, "copy", "--to", local_arg],
    );
    // Another machine without the identity cannot know what it holds: it says so.
    let out = sandbox.run(&["--archive", plain_arg, "copy", "--to", local_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--identity"), "{}", stderr(&out));
    let out = with_identity(
        &sandbox,
        &other_identity,
        &["--archive", local_arg, "verify", "--full"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} messages", listed.len() + 1)),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The first identity does not open the copy: it was made for other recipients.
    let out = with_identity(&sandbox, &identity, &["--archive", local_arg, "list"]);
    assert!(
        stderr(&out).contains("this key cannot open this archive"),
        "{}",
        stderr(&out)
    );
    // init with a key the archive does not have changes nothing, and says so by failing.
    let out = sandbox.run(&[
        "--archive",
        local_arg,
        "init",
        "--encrypt",
        "--recipient",
        &recipient,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keys cannot be added"),
        "{}",
        stderr(&out)
    );
    let same = sandbox.ok(&[
        "--archive",
        local_arg,
        "init",
        "--encrypt",
        "--recipient",
        &other_recipient,
    ]);
    assert!(same.contains("nothing changed"), "{same}");

    // An encrypted archive is never copied into the clear by accident.
    let clear = sandbox.path().join("clear");
    let clear_arg = clear.to_str().unwrap();
    let mut c = s3("fresh");
    let out = c
        .args(["--identity", id, "copy", "--to", clear_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--plain"), "{}", stderr(&out));
    assert!(!clear.exists(), "a refused copy made {clear_arg}");
    let copied = run(
        s3("fresh"),
        &["--identity", id, "copy", "--plain", "--to", clear_arg],
    );
    assert!(
        copied.contains(&format!("{} messages new", listed.len())),
        "{copied}"
    );
}

#[test]
fn large_messages_stream_into_an_encrypted_pack_and_a_streamed_duplicate_is_dropped() {
    let (sandbox, identity) = encrypted_sandbox();
    // Over the 8 MiB a writer holds in memory: these stream through a scratch file.
    let mut big = b"From: a@example.org\r\nSubject: the big one\r\n\r\n".to_vec();
    let mut x: u32 = 7;
    while big.len() < 9 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        big.extend_from_slice(format!("{:08x}\r\n", x).as_bytes());
    }
    let mut other_big = big.clone();
    other_big.extend_from_slice(b"one more line\r\n");
    let dir = sandbox.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let cur = dir.join("cur");
    std::fs::write(cur.join("1.big:2,S"), &big).unwrap();
    std::fs::write(cur.join("2.same-big:2,S"), &big).unwrap();
    std::fs::write(cur.join("3.small:2,S"), b"Subject: small\r\n\r\nhi\r\n").unwrap();
    std::fs::write(cur.join("4.other-big:2,S"), &other_big).unwrap();
    let out = sandbox.ok(&["import", &format!("maildir:{}", dir.display())]);
    assert!(out.contains("3 new"), "{out}");
    let verified = ok_with(&sandbox, &identity, &["verify", "--full"]);
    assert!(verified.contains("OK"), "{verified}");
    for (name, bytes) in [("big", &big), ("other", &other_big)] {
        let id = sha256_hex(bytes);
        let out = with_identity(&sandbox, &identity, &["cat", &id]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(
            out.stdout == *bytes,
            "{name} did not come back byte for byte"
        );
    }
    // The pack is one age file, and nothing plaintext was left in the archive.
    let pack = only_pack(&sandbox.archive());
    assert!(
        std::fs::read(&pack)
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n")
    );
    assert_reveals_nothing(&sandbox.archive(), &[b"the big one".to_vec()]);
}

#[test]
fn a_flipped_byte_in_an_encrypted_pack_costs_only_the_messages_of_its_chunk() {
    let (sandbox, identity) = encrypted_sandbox();
    let dir = sandbox.path().join("mail");
    crate::support::write_maildir(&dir, 1500, 99);
    sandbox.ok(&["import", &format!("maildir:{}", dir.display())]);
    let pack = only_pack(&sandbox.archive());
    let len = std::fs::metadata(&pack).unwrap().len();
    assert!(
        len > 4 * 65_536,
        "the pack spans several age chunks ({len} bytes)"
    );
    flip(&pack, (len / 2) as i64);
    let out = with_identity(&sandbox, &identity, &["verify", "--full", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged"].as_array().unwrap().len();
    // (Before, every message after the damaged chunk was lost to verify and repair.)
    assert!(
        (1..300).contains(&damaged),
        "one 64 KiB chunk holds about a hundred of these messages, not {damaged} of 1500"
    );
    // A restore gets every message outside that chunk too (before, a reader that had met the
    // damage failed every later message of the pack).
    let out_dir = sandbox.path().join("restored");
    let to = format!("maildir:{}", out_dir.display());
    let restored = with_identity(&sandbox, &identity, &["restore", "--to", &to, "-q"]);
    assert_eq!(restored.status.code(), Some(3), "{}", stderr(&restored));
    let files = std::fs::read_dir(out_dir.join("cur")).unwrap().count();
    assert_eq!(files, 1500 - damaged);
    // repair keeps every message outside that chunk (exit 3: some are lost).
    let repaired = with_identity(&sandbox, &identity, &["repair"]);
    assert_eq!(repaired.status.code(), Some(3), "{}", stderr(&repaired));
    let verified = ok_with(&sandbox, &identity, &["verify", "--full"]);
    assert!(
        verified.contains(&format!("{} messages", 1500 - damaged)),
        "{verified}"
    );
}

#[test]
fn a_run_with_the_identity_rebuilds_what_a_writer_without_it_needs() {
    let (sandbox, identity) = encrypted_sandbox();
    let eml = |name: &str| format!("eml:{}", corpus_dir().join(name).display());
    sandbox.ok(&["import", &eml("cpython-msg_04.eml")]);
    // This host's cache is lost (or the writer moved to a new host with the writer key).
    std::fs::remove_dir_all(sandbox.path().join(".cache/popvault/sealed")).unwrap();
    let mbox = format!("mbox:{}", corpus_dir().join("git-sample.mbox").display());
    let out = sandbox.run(&["import", &mbox]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--identity"), "{}", stderr(&out));
    // One command with the identity, and the writer needs it no more.
    ok_with(&sandbox, &identity, &["list"]);
    let out = sandbox.run(&["import", &mbox]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = sandbox.ok(&["import", &eml("cpython-msg_04.eml")]);
    assert!(
        !again.contains("1 new"),
        "the rebuilt cache knows what is archived: {again}"
    );
    let status = sandbox.ok(&["status"]);
    assert!(!status.is_empty());
    let verified = ok_with(&sandbox, &identity, &["verify", "--full"]);
    assert!(verified.contains("OK"), "{verified}");
}
