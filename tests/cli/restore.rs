//! `popvault restore` into Maildir, mbox and a real Dovecot IMAP server, read back by independent
//! readers (Python's mailbox and imaplib) and compared byte for byte.

use std::collections::HashMap;
use std::process::Command;

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, corpus_dir, sha256_hex, write_maildir};

fn helper(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/helpers")
        .join(name)
}

fn python_dump(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 is needed for the independent readers");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An archive holding the whole corpus (messages and mboxes) and some generated mail.
fn corpus_archive() -> (Sandbox, HashMap<String, (Vec<u8>, serde_json::Value)>) {
    let sandbox = Sandbox::new();
    let mut args = vec!["import".to_string()];
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("eml") => args.push(format!("eml:{}", p.display())),
            // Prose named .mbox, which import refuses (archive_corpus tests that).
            Some("mbox") if p.ends_with("neomutt-cherry.mbox") => {}
            Some("mbox") => args.push(format!("mbox:{}", p.display())),
            _ => {}
        }
    }
    write_maildir(&sandbox.path().join("gen"), 50, 3);
    args.push(format!("maildir:{}", sandbox.path().join("gen").display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sandbox.ok(&args);
    let mut archived = HashMap::new();
    for m in sandbox.list() {
        let id = m["id"].as_str().unwrap().to_string();
        archived.insert(id.clone(), (sandbox.cat(&id), m));
    }
    (sandbox, archived)
}

/// Every message of `folder` on the test Dovecot, read over IMAPS by Python's imaplib.
fn imap_folder(dovecot: &Dovecot, folder: &str) -> Vec<serde_json::Value> {
    python_dump(&[
        helper("imap_dump.py").to_str().unwrap(),
        &dovecot.imaps_port.to_string(),
        dovecot.ca_pem().to_str().unwrap(),
        dovecot.user(),
        dovecot.password(),
        folder,
    ])
}

fn restore_json(sandbox: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["restore", "--json"];
    full.extend_from_slice(args);
    let out = sandbox
        .command()
        .args(&full)
        .env("POPVAULT_PASSWORD", "secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 3 | 4)),
        "{full:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn maildir_and_mbox_restores_read_back_byte_exact_and_never_duplicate() {
    let (sandbox, archived) = corpus_archive();
    let maildir = sandbox.path().join("restored-maildir");
    let mbox = sandbox.path().join("restored.mbox");
    let to_maildir = format!("maildir:{}", maildir.display());
    let to_mbox = format!("mbox:{}", mbox.display());

    let r = restore_json(&sandbox, &["--to", &to_maildir]);
    assert_eq!(r["restored"], archived.len());
    let read = python_dump(&[
        helper("mailbox_dump.py").to_str().unwrap(),
        "maildir",
        maildir.to_str().unwrap(),
    ]);
    assert_eq!(read.len(), archived.len());
    for m in &read {
        let body = hex::decode(m["body"].as_str().unwrap()).unwrap();
        let (original, meta) = archived
            .get(&sha256_hex(&body))
            .expect("a restored message is byte-identical to an archived one");
        assert_eq!(&body, original);
        assert_eq!(m["flags"], "S");
        // The message's date as `list` shows it (Date, else Received, else first seen).
        if let Some(date) = meta["time"].as_str() {
            let expected = chrono::DateTime::parse_from_rfc3339(date)
                .unwrap()
                .timestamp()
                .max(0);
            assert_eq!(
                m["mtime"].as_i64().unwrap(),
                expected,
                "mtime of {}",
                meta["id"]
            );
        }
    }

    let r = restore_json(&sandbox, &["--to", &to_mbox]);
    assert_eq!(r["restored"], archived.len());
    let read = python_dump(&[
        helper("mailbox_dump.py").to_str().unwrap(),
        "mbox",
        mbox.to_str().unwrap(),
    ]);
    assert_eq!(
        read.len(),
        archived.len(),
        "Python splits the restored mbox into as many messages"
    );
    for m in &read {
        let mut body = hex::decode(m["body"].as_str().unwrap()).unwrap();
        if !archived.contains_key(&sha256_hex(&body)) {
            body.pop(); // mbox adds the final newline a message lacked
        }
        assert!(
            archived.contains_key(&sha256_hex(&body)),
            "mbox message differs from every archived one: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }

    // Re-running either restore adds nothing.
    for to in [&to_maildir, &to_mbox] {
        let r = restore_json(&sandbox, &["--to", to]);
        assert_eq!(
            (r["restored"].as_u64(), r["already_present"].as_u64()),
            (Some(0), Some(archived.len() as u64)),
            "{to}"
        );
    }
    let dry = restore_json(
        &sandbox,
        &[
            "--to",
            &format!("maildir:{}", sandbox.path().join("empty").display()),
            "--dry-run",
            "--subject",
            "whitelist",
        ],
    );
    let whitelist = archived
        .values()
        .filter(|(_, m)| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.to_lowercase().contains("whitelist"))
        })
        .count();
    assert!(whitelist >= 2);
    assert_eq!(dry["new"], whitelist);
    assert_eq!(dry["plan"].as_array().unwrap().len(), whitelist);
    assert!(
        !sandbox.path().join("empty").exists(),
        "--dry-run wrote nothing, not even the Maildir's directories"
    );
}

/// The count of messages mutt shows for `folder` on its status line ("Msgs:N"), read from its
/// screen: mutt only reads mailboxes interactively, so it runs under `script` for a terminal.
fn mutt_count(folder: &std::path::Path) -> Option<u64> {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    // `folder` set to an existing directory: otherwise a first run asks whether to create
    // ~/Mail and waits for an answer. A prompt must fail the test, never hang it: `timeout
    // --foreground` keeps mutt in the terminal's foreground group (in a background group it
    // would stop on its first terminal write, and again in its exit handler), `-k` follows
    // with SIGKILL, and this side kills the whole group and reads a file, not a pipe that a
    // straggler could hold open.
    let command = format!(
        "timeout --foreground -k 5 60 mutt -R -n -F /dev/null -e 'set folder={}' -f '{}' -e 'set wait_key=no' -e 'push <quit>'",
        folder.parent().unwrap().display(),
        folder.display()
    );
    let screen_file = folder.with_extension("screen");
    let mut child = Command::new("script")
        .args(["-qc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&screen_file).unwrap())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            let screen = std::fs::read(&screen_file).unwrap_or_default();
            panic!(
                "mutt did not quit within 90 s; its screen:\n{}",
                String::from_utf8_lossy(&screen)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let screen = String::from_utf8_lossy(&std::fs::read(&screen_file).unwrap()).into_owned();
    let at = screen.rfind("Msgs:")? + "Msgs:".len();
    let digits: String = screen[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The issue asks for restores that mutt reads as they are: it must see every message in both.
#[test]
fn mutt_reads_every_message_of_a_restored_maildir_and_mbox() {
    let found = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found("mutt") || !found("script") {
        eprintln!("SKIPPED LOUDLY: mutt or script is not installed (apt-get install mutt)");
        return;
    }
    let (sandbox, archived) = corpus_archive();
    let maildir = sandbox.path().join("for-mutt");
    let mbox = sandbox.path().join("for-mutt.mbox");
    restore_json(
        &sandbox,
        &["--to", &format!("maildir:{}", maildir.display())],
    );
    restore_json(&sandbox, &["--to", &format!("mbox:{}", mbox.display())]);
    assert_eq!(mutt_count(&maildir), Some(archived.len() as u64), "Maildir");
    assert_eq!(mutt_count(&mbox), Some(archived.len() as u64), "mbox");
}

/// What an IMAP client reads back with BODY.PEEK[]: each bare LF made CRLF (as IMAP requires),
/// every other byte as archived, but NUL shown as 0x80 (a FETCH without BINARY cannot carry it).
fn normalise(raw: &[u8]) -> Vec<u8> {
    popvault::restore::imap::crlf_normalise(raw)
        .into_iter()
        .map(|b| if b == 0 { 0x80 } else { b })
        .collect()
}

#[test]
fn imap_restore_over_tls_keeps_bytes_dates_and_flags_and_never_duplicates() {
    let dovecot = Dovecot::start();
    let (sandbox, archived) = corpus_archive();
    let url = format!(
        "imaps://{}@127.0.0.1:{}/Restored/Old mail ü",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    let r = restore_json(&sandbox, &["--to", &url, "--ca-file", ca.to_str().unwrap()]);
    let skipped = r["skipped"].as_array().unwrap().len();
    // Archived messages that differ only in line ends are one message to the server.
    let distinct: std::collections::HashSet<Vec<u8>> =
        archived.values().map(|(raw, _)| normalise(raw)).collect();
    assert!(
        distinct.len() < archived.len(),
        "the corpus has LF and CRLF copies"
    );
    assert_eq!(
        r["restored"].as_u64().unwrap() as usize + skipped,
        distinct.len(),
        "{r}"
    );
    assert_eq!(skipped, 0, "{r}");

    let read = imap_folder(&dovecot, "Restored.Old mail &APw-");
    assert_eq!(read.len(), distinct.len());
    let by_normalised: HashMap<String, &serde_json::Value> = archived
        .values()
        .map(|(raw, meta)| (sha256_hex(&normalise(raw)), meta))
        .collect();
    // Dovecot shows a part whose transfer encoding is binary re-encoded to base64 in a FETCH
    // without BINARY (and BINARY undoes every encoding): such a multipart message is known by
    // its own header block, which the re-encoding leaves alone.
    let header = |m: &[u8]| sha256_hex(popvault::archive::envelope::header_block(m));
    let by_header: HashMap<String, &serde_json::Value> = archived
        .values()
        .filter(|(raw, _)| {
            String::from_utf8_lossy(raw)
                .to_ascii_lowercase()
                .contains("transfer-encoding: binary")
        })
        .map(|(raw, meta)| (header(&normalise(raw)), meta))
        .collect();
    for m in &read {
        let body = hex::decode(m["body"].as_str().unwrap()).unwrap();
        let meta = by_normalised
            .get(&sha256_hex(&body))
            .or_else(|| by_header.get(&header(&body)))
            .unwrap_or_else(|| {
                panic!(
                    "IMAP message differs from every archived one (after CRLF normalisation): {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )
            });
        assert!(m["flags"].as_array().unwrap().iter().any(|f| f == "\\Seen"));
        if let Some(date) = meta["time"].as_str() {
            let expected = chrono::DateTime::parse_from_rfc3339(date)
                .unwrap()
                .timestamp();
            assert_eq!(
                m["internaldate"].as_i64().unwrap(),
                expected,
                "INTERNALDATE of {}",
                meta["id"]
            );
        }
    }
    let again = restore_json(
        &sandbox,
        &[
            "--to",
            &url.replace("imaps://", "imap://").replace(
                &dovecot.imaps_port.to_string(),
                &dovecot.imap_port.to_string(),
            ),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (
            again["restored"].as_u64(),
            again["already_present"].as_u64()
        ),
        (Some(0), Some(archived.len() as u64))
    );
}

#[test]
fn an_imap_restore_killed_midway_and_rerun_ends_with_each_message_once() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let messages = write_maildir(&sandbox.path().join("gen"), 3000, 17);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("gen").display()),
    ]);
    let url = format!(
        "imaps://{}@127.0.0.1:{}/Crash",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    let mut rng = Rng(0xabcdef);
    let mut interrupted = 0;
    for _ in 0..3 {
        let mut command = sandbox.command();
        command
            .args([
                "restore",
                "--to",
                &url,
                "--ca-file",
                ca.to_str().unwrap(),
                "-q",
            ])
            .env("POPVAULT_PASSWORD", dovecot.password());
        interrupted += usize::from(crate::support::kill_9_after(
            &mut command,
            50 + rng.next() % 200,
        ));
    }
    assert!(
        interrupted > 0,
        "no restore was interrupted: the test proved nothing"
    );
    let r = restore_json(&sandbox, &["--to", &url, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(
        r["already_present"].as_u64().unwrap() + r["restored"].as_u64().unwrap(),
        3000
    );
    let read = imap_folder(&dovecot, "Crash");
    assert_eq!(read.len(), 3000, "each message exactly once");
    let mut seen = std::collections::HashSet::new();
    for m in &read {
        assert!(
            seen.insert(m["body"].as_str().unwrap().to_string()),
            "a duplicate on the server"
        );
    }
    for m in messages.iter().step_by(101) {
        assert!(seen.contains(&hex::encode(normalise(m))));
    }
}

/// Three messages, the second of which holds a line that is an IMAP command.
fn archive_with_a_command_in_a_message() -> (Sandbox, Vec<Vec<u8>>) {
    let sandbox = Sandbox::new();
    let dir = sandbox.path().join("three");
    let messages: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            format!(
                "From: a@example.org\r\nSubject: {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nline\r\nzz DELETE \"INBOX\"\r\nend {n}\r\n"
            )
            .into_bytes()
        })
        .collect();
    for (n, m) in messages.iter().enumerate() {
        std::fs::write(sandbox.path().join(format!("{n}.eml")), m).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..3 {
        let path = sandbox.path().join(format!("{n}.eml"));
        sandbox.ok(&["import", &format!("eml:{}", path.display())]);
    }
    (sandbox, messages)
}

fn restore_to_fake(sandbox: &Sandbox, port: u16, password: &str) -> std::process::Output {
    sandbox
        .command()
        .args([
            "restore",
            "--to",
            &format!("imap://tester@127.0.0.1:{port}/INBOX"),
            "--tls",
            "none",
        ])
        .env("POPVAULT_PASSWORD", password)
        .output()
        .unwrap()
}

/// Untagged data before a literal's go-ahead must not put the client out of step: out of step,
/// message lines would reach the server as commands.
#[test]
fn untagged_data_before_the_go_ahead_keeps_every_message_whole() {
    let server =
        crate::fake_imap::FakeImap::start(crate::fake_imap::ImapFault::ExistsBeforeGoAhead);
    let (sandbox, messages) = archive_with_a_command_in_a_message();
    let out = restore_to_fake(&sandbox, server.port, "pw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut stored = server.stored.lock().unwrap().clone();
    stored.sort();
    let mut expected = messages.clone();
    expected.sort();
    assert_eq!(stored, expected);
    assert!(
        !server
            .commands
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("zz ")),
        "a message line reached the server as a command"
    );
}

/// A message that lands just after the folder was opened (the server finishing a killed run's
/// APPEND) is seen before presence looks, not added a second time.
#[test]
fn a_message_landing_after_the_folder_was_opened_is_not_added_twice() {
    let server = crate::fake_imap::FakeImap::start(crate::fake_imap::ImapFault::LateAppends);
    let (sandbox, messages) = archive_with_a_command_in_a_message();
    server.late.lock().unwrap().push(messages[1].clone());
    let out = restore_to_fake(&sandbox, server.port, "pw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // A restore that did not wait is over before the message lands: let it land, then count.
    for _ in 0..50 {
        if server.late.lock().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        server.late.lock().unwrap().is_empty(),
        "the message never landed"
    );
    let text = |ms: &[Vec<u8>]| {
        let mut t: Vec<String> = ms
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        text(&server.stored.lock().unwrap()),
        text(&messages),
        "each message once"
    );
}

/// An APPEND refused before its literal (no LITERAL+) skips that message only.
#[test]
fn an_append_refused_before_its_literal_skips_that_message_only() {
    let server = crate::fake_imap::FakeImap::start(crate::fake_imap::ImapFault::RefuseSecondAppend);
    let (sandbox, _) = archive_with_a_command_in_a_message();
    let out = restore_to_fake(&sandbox, server.port, "pw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A refusal is no damage (3): the restore is partial (4).
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(server.stored.lock().unwrap().len(), 2, "{stderr}");
}

/// A refusal that quotes the client's SASL response must not show the password in any form.
#[test]
fn an_imap_server_quoting_the_credentials_does_not_show_them() {
    use base64::Engine as _;
    const SECRET: &str = "s3cr3t-pw";
    let server = crate::fake_imap::FakeImap::start(crate::fake_imap::ImapFault::EchoCredentials);
    let (sandbox, _) = archive_with_a_command_in_a_message();
    let out = restore_to_fake(&sandbox, server.port, SECRET);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[password]"), "{stderr}");
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0tester\0{SECRET}"));
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(&plain),
        "{stderr}"
    );
}

fn small_archive() -> (Sandbox, Vec<Vec<u8>>) {
    let sandbox = Sandbox::new();
    let messages = write_maildir(&sandbox.path().join("md"), 40, 3);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("md").display()),
    ]);
    (sandbox, messages)
}

/// Each archived message exactly once in the mbox, read back by popvault's own mbox reader
/// (an import into a fresh archive), which unquotes `>From `.
fn assert_mbox_holds_each_once(mbox: &std::path::Path, messages: &[Vec<u8>]) {
    let reader = Sandbox::new();
    reader.ok(&["import", &format!("mbox:{}", mbox.display())]);
    let listed = reader.list();
    assert_eq!(
        listed.len(),
        messages.len(),
        "messages in {}",
        mbox.display()
    );
    for m in messages {
        assert_eq!(reader.cat(&sha256_hex(m)), *m);
    }
}

/// A write that fails halfway (here: the file size limit) leaves no partial message behind;
/// the re-run completes the mbox with each message once.
#[test]
fn an_mbox_restore_cut_off_by_a_write_error_leaves_no_partial_message() {
    let (sandbox, messages) = small_archive();
    let mbox = sandbox.path().join("out.mbox");
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 64; trap '' XFSZ; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_popvault"))
        .arg("--archive")
        .arg(sandbox.archive())
        .args(["restore", "--to", &format!("mbox:{}", mbox.display())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let after_failure = std::fs::read(&mbox).unwrap();
    assert!(after_failure.len() <= 64 * 512, "{}", after_failure.len());
    let reader = Sandbox::new();
    if !after_failure.is_empty() {
        reader.ok(&["import", &format!("mbox:{}", mbox.display())]);
        for m in reader.list() {
            assert!(
                messages
                    .iter()
                    .any(|x| sha256_hex(x) == m["id"].as_str().unwrap()),
                "a cut-off message was left in the mbox"
            );
        }
    }
    restore_json(&sandbox, &["--to", &format!("mbox:{}", mbox.display())]);
    assert_mbox_holds_each_once(&mbox, &messages);
}

/// --dry-run writes nothing anywhere; a file that is not an mbox, or not a file, is refused;
/// a second restore into a destination in use is refused.
#[test]
fn restore_refuses_what_it_should_not_touch_and_a_dry_run_touches_nothing() {
    let (sandbox, _) = small_archive();
    let maildir = sandbox.path().join("new-maildir");
    let mbox = sandbox.path().join("new.mbox");
    for to in [
        format!("maildir:{}", maildir.display()),
        format!("mbox:{}", mbox.display()),
    ] {
        let r = restore_json(&sandbox, &["--to", &to, "--dry-run"]);
        assert_eq!(r["new"], 40, "{to}");
    }
    assert!(
        !maildir.exists() && !mbox.exists(),
        "a dry run created files"
    );

    let notes = sandbox.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    for (to, needle) in [
        (
            format!("mbox:{}", notes.display()),
            "does not start with a `From ` line",
        ),
        ("mbox:/dev/full".to_string(), "not a regular file"),
    ] {
        let out = sandbox.run(&["restore", "--to", &to]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(stderr.contains(needle), "{to}: {stderr}");
    }
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes\n");

    // Another restore holds the destination: this one is refused, nothing is added.
    std::fs::write(&mbox, b"").unwrap();
    let held = std::fs::File::open(&mbox).unwrap();
    held.lock().unwrap();
    let out = sandbox.run(&["restore", "--to", &format!("mbox:{}", mbox.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another restore"), "{stderr}");
    assert_eq!(std::fs::metadata(&mbox).unwrap().len(), 0);
    drop(held);
}

/// Two messages with the same headers and the same body length, differing only in the body:
/// restoring one, then both, leaves each exactly once on the server (the presence key alone
/// cannot tell them apart).
#[test]
fn messages_that_differ_only_in_their_bodies_are_both_restored_once() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let head = "From: a@example.org\r\nSubject: invoice\r\nMessage-ID: <same@example.org>\r\n\r\n";
    let first = format!("{head}Pay 100 EUR\r\n").into_bytes();
    let second = format!("{head}Pay 900 EUR\r\n").into_bytes();
    for (n, m) in [&first, &second].iter().enumerate() {
        let path = sandbox.path().join(format!("{n}.eml"));
        std::fs::write(&path, m).unwrap();
        sandbox.ok(&["import", &format!("eml:{}", path.display())]);
    }
    let url = format!(
        "imaps://{}@127.0.0.1:{}/Twins",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    let ca = ca.to_str().unwrap();
    let one = restore_json(
        &sandbox,
        &["--to", &url, "--ca-file", ca, &sha256_hex(&second)],
    );
    assert_eq!(one["restored"], 1, "{one}");
    let both = restore_json(&sandbox, &["--to", &url, "--ca-file", ca]);
    assert_eq!(
        (both["restored"].as_u64(), both["already_present"].as_u64()),
        (Some(1), Some(1)),
        "{both}"
    );
    let read = imap_folder(&dovecot, "Twins");
    let mut bodies: Vec<Vec<u8>> = read
        .iter()
        .map(|m| hex::decode(m["body"].as_str().unwrap()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, vec![first, second]);
}

/// Every byte through IMAP: NUL (a literal8, where the server offers BINARY), a lone CR (raw
/// binary parts have them), 8-bit bytes and a line of megabytes come back as archived, with
/// only each bare LF made CRLF; a re-run adds nothing.
#[test]
fn imap_restore_keeps_every_byte_nul_lone_cr_8bit_and_long_lines() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let mut long = b"From: a@example.org\r\nSubject: long line\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'q', 2 << 20));
    long.extend_from_slice(b"\r\n");
    let messages: Vec<Vec<u8>> = vec![
        b"From: a@example.org\r\nSubject: nul\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\nx\x00y\x00\r\n".to_vec(),
        b"From: a@example.org\r\nSubject: lone cr\r\n\r\nDER \x30\x82\r\x41\x0d end\rof\r\n".to_vec(),
        b"From: a@example.org\nSubject: lf and 8-bit\n\n\xe9t\xe9 \xff\xfe\n".to_vec(),
        long,
    ];
    for (n, m) in messages.iter().enumerate() {
        let path = sandbox.path().join(format!("m{n}.eml"));
        std::fs::write(&path, m).unwrap();
        sandbox.ok(&["import", &format!("eml:{}", path.display())]);
    }
    let url = format!(
        "imaps://{}@127.0.0.1:{}/Bytes",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    for run in 0..2 {
        let r = restore_json(&sandbox, &["--to", &url, "--ca-file", ca.to_str().unwrap()]);
        assert_eq!(
            r["restored"],
            if run == 0 { 4 } else { 0 },
            "run {run}: {r}"
        );
    }
    let read = imap_folder(&dovecot, "Bytes");
    assert_eq!(read.len(), 4);
    // BINARY.PEEK[]: the bytes as stored (these messages have no base64 or QP part to undo).
    let mut got: Vec<Vec<u8>> = read
        .iter()
        .map(|m| hex::decode(m["binary"].as_str().unwrap()).unwrap())
        .collect();
    let mut want: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| popvault::restore::imap::crlf_normalise(m))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "the server holds other bytes than were archived: {:?} for {:?}",
            String::from_utf8_lossy(&g[..g.len().min(200)]),
            String::from_utf8_lossy(&w[..w.len().min(200)])
        );
    }

    // Dovecot keeps mail with LF line ends, so it stores CR CR LF as CR LF: such a message
    // cannot come back byte for byte, but it must not be added again on every run.
    let crcr = sandbox.path().join("crcr.eml");
    std::fs::write(
        &crcr,
        b"From: a@example.org\r\nSubject: cr cr lf\r\n\r\nx\r\r\ny\r\n",
    )
    .unwrap();
    sandbox.ok(&["import", &format!("eml:{}", crcr.display())]);
    for run in 0..2 {
        let r = restore_json(&sandbox, &["--to", &url, "--ca-file", ca.to_str().unwrap()]);
        assert_eq!(
            r["restored"],
            if run == 0 { 1 } else { 0 },
            "run {run}: {r}"
        );
    }
}

/// The README's POP-to-IMAP story: the old client's LF mbox and the CRLF copies from POP3 hold
/// the same mail under other ids. The folder gets each mail once, and a message that starts with
/// a blank line is not appended again on every run.
#[test]
fn imap_restore_sends_each_mail_once_whatever_its_line_ends() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let crlf = sandbox.path().join("crlf");
    let messages = write_maildir(&crlf, 12, 21);
    let lf = sandbox.path().join("lf");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(lf.join(sub)).unwrap();
    }
    for (n, m) in messages.iter().enumerate() {
        let text: Vec<u8> = m.iter().copied().filter(|&b| b != b'\r').collect();
        std::fs::write(lf.join("cur").join(format!("lf{n}:2,S")), text).unwrap();
    }
    std::fs::write(
        sandbox.path().join("blank.eml"),
        b"\nFrom: a@x\nSubject: leading blank\n\nbody\n",
    )
    .unwrap();
    for source in [
        format!("maildir:{}", crlf.display()),
        format!("maildir:{}", lf.display()),
        format!("eml:{}", sandbox.path().join("blank.eml").display()),
    ] {
        sandbox.ok(&["import", &source]);
    }
    let url = format!(
        "imaps://{}@127.0.0.1:{}/Once",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    let r = restore_json(
        &sandbox,
        &["--to", &url, "--ca-file", ca.to_str().unwrap(), "--dry-run"],
    );
    assert_eq!(r["new"], 13, "{r}");
    for run in 0..3 {
        let r = restore_json(&sandbox, &["--to", &url, "--ca-file", ca.to_str().unwrap()]);
        assert_eq!(
            r["restored"],
            if run == 0 { 13 } else { 0 },
            "run {run}: {r}"
        );
        assert_eq!(r["selected"], 25, "{r}");
    }
    assert_eq!(imap_folder(&dovecot, "Once").len(), 13);
}
