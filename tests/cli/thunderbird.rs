//! `import thunderbird:` of profiles the real Thunderbird wrote (Debian's, headless, fetching
//! from a test Dovecot: tests/thunderbird/run.sh), and of profiles built here as older
//! Thunderbird versions and other platforms write them (../shared/notes/thunderbird.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::dovecot::Dovecot;
use crate::support::{Sandbox, sha256_hex};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/thunderbird")
        .join(name)
}

/// The test mail: plain messages and the cases Thunderbird changes when it stores them.
fn server_messages() -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = (1..=5)
        .map(|n| {
            format!(
                "Return-Path: <s{n}@example.org>\r\nFrom: Sender {n} <s{n}@example.org>\r\nTo: alice@example.org\r\n\
                 Subject: message {n}\r\nDate: Mon, {n} Jan 2024 10:00:00 +0100\r\nMessage-ID: <{n}@tb.example>\r\n\r\n\
                 line one of {n}\r\n.a line starting with a dot\r\n\r\nthe end\r\n"
            )
            .into_bytes()
        })
        .collect();
    messages.push(
        b"From: Quoter <q@example.org>\r\nSubject: From lines\r\nDate: Tue, 2 Jan 2024 10:00:00 +0100\r\n\r\n\
          From the start of a line\r\n>From once quoted\r\n>>From twice\r\nFromage\r\n from indented\r\n"
            .to_vec(),
    );
    messages.push(
        b"From: Carriage <c@example.org>\r\nSubject: a bare CR\r\nDate: Wed, 3 Jan 2024 10:00:00 +0100\r\n\r\n\
          before\rafter\r\nend with CR\r\r\n"
            .to_vec(),
    );
    messages.push(
        b"X-Mozilla-Status: 0001\r\nX-UIDL: forged\r\nFrom: Sender <x@example.org>\r\nSubject: sender's own Mozilla headers\r\n\
          Date: Thu, 4 Jan 2024 10:00:00 +0100\r\n\r\nbody\r\n"
            .to_vec(),
    );
    messages
}

/// Runs the real Thunderbird on `profile`: it fetches every account's mail, then does `actions`
/// on the account of host 127.0.0.1 (tests/thunderbird/run.sh).
fn thunderbird(profile: &Path, dovecot: &Dovecot, actions: &str) {
    let out = Command::new("bash")
        .arg(script("run.sh"))
        .arg(profile)
        .env("TB_POP3_PASSWORD", dovecot.password())
        .env("TB_ACTIONS", actions)
        .env("TB_ACT_ON", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Thunderbird: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A profile with two POP3 accounts on one Dovecot mailbox: `127.0.0.1` stores mbox,
/// `localhost` maildir.
fn make_profile(dir: &Path, dovecot: &Dovecot) {
    let out = Command::new("bash")
        .arg(script("profile.sh"))
        .arg(dir)
        .arg(dovecot.pop3_port.to_string())
        .arg(dovecot.user())
        .args(["mbox", "127.0.0.1", "maildir", "localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config whose account `alice` is the profile's `127.0.0.1` account.
fn config(sandbox: &Sandbox, dovecot: &Dovecot) -> PathBuf {
    let path = sandbox.path().join("config.toml");
    fs::write(
        &path,
        format!(
            "[[account]]\nname = \"alice\"\nserver = \"pop3://{}@127.0.0.1:{}\"\nca_file = \"{}\"\n",
            dovecot.user(),
            dovecot.pop3_port,
            dovecot.ca_pem().display()
        ),
    )
    .unwrap();
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&path, perms).unwrap();
    path
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn folder_counts(summary: &serde_json::Value, account: &str) -> BTreeMap<String, (u64, u64)> {
    let account = summary["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == account)
        .unwrap_or_else(|| panic!("no account {account} in {summary}"));
    account["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["folder"].as_str().unwrap().to_string(),
                (
                    f["messages"].as_u64().unwrap(),
                    f["deleted"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(entries) = fs::read_dir(dir.join(sub)) {
            for e in entries {
                out.push(fs::read(e.unwrap().path()).unwrap());
            }
        }
    }
    out
}

/// A Dovecot holding [`server_messages`], and a profile into which the real Thunderbird fetched
/// them and then did `actions`, with a config whose account `alice` is its 127.0.0.1 account.
struct Fetched {
    dovecot: Dovecot,
    sandbox: Sandbox,
    messages: Vec<Vec<u8>>,
    config: PathBuf,
    /// `thunderbird:PROFILE`
    spec: String,
}

impl Fetched {
    /// `popvault backup --json` of the account, which must succeed; its report.
    fn backup(&self) -> serde_json::Value {
        let out = self
            .sandbox
            .command()
            .args([
                "--config",
                self.config.to_str().unwrap(),
                "backup",
                "--json",
            ])
            .env("POPVAULT_PASSWORD", self.dovecot.password())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn fetched_by_thunderbird(actions: &str) -> Fetched {
    let dovecot = Dovecot::start();
    let messages = server_messages();
    for (i, m) in messages.iter().enumerate() {
        dovecot.add_message(&format!("{:03}.tb", i + 1), m);
    }
    let sandbox = Sandbox::new();
    let profile = sandbox.path().join("profile");
    make_profile(&profile, &dovecot);
    thunderbird(&profile, &dovecot, actions);
    let config = config(&sandbox, &dovecot);
    let spec = format!("thunderbird:{}", profile.display());
    Fetched {
        dovecot,
        sandbox,
        messages,
        config,
        spec,
    }
}

/// The real client: Thunderbird fetches, reads, flags, deletes and files mail; popvault imports
/// the profile with every message as the server sent it, skips what Thunderbird deleted, knows
/// which UIDLs it holds (the backup downloads nothing), and puts the folders back.
#[test]
fn a_profile_thunderbird_wrote_is_imported_exactly_and_the_backup_downloads_nothing_twice() {
    let run =
        fetched_by_thunderbird("read 1\nflag 2\ndelete 3\nmove 4 Archives/2015\nmove 5 Archives");
    let (dovecot, sandbox, messages, spec) = (&run.dovecot, &run.sandbox, &run.messages, &run.spec);
    let config = run.config.to_str().unwrap();

    let survey =
        json_lines(&sandbox.ok(&["--config", config, "import", "--dry-run", "--json", spec]));
    let mbox = folder_counts(&survey[0], &format!("{}@127.0.0.1", dovecot.user()));
    // A move or a delete leaves the Inbox copy marked deleted until Thunderbird compacts.
    assert_eq!(mbox["Inbox"], (messages.len() as u64 - 3, 3), "{mbox:?}");
    assert_eq!(mbox["Trash"], (1, 0));
    assert_eq!(mbox["Archives"], (1, 0));
    assert_eq!(mbox["Archives/2015"], (1, 0));
    let maildir = folder_counts(&survey[0], &format!("{}@localhost", dovecot.user()));
    assert_eq!(maildir["Inbox"], (messages.len() as u64, 0), "{maildir:?}");
    assert!(
        sandbox.run(&["list"]).stdout.is_empty(),
        "a dry run writes nothing"
    );

    let import = json_lines(&sandbox.ok(&["--config", config, "import", "--json", spec]));
    let tb = &import[0]["thunderbird"];
    let in_profile = (messages.len() - 3) + 3 + messages.len();
    assert_eq!(tb["recovered"], in_profile as u64, "{tb}");
    assert_eq!(tb["deleted_skipped"], 3);
    assert_eq!(tb["pop3_uidls"]["alice"], messages.len() as u64, "{tb}");
    // Every message of the server, as it sent it, once.
    let wire: BTreeSet<String> = messages.iter().map(|m| sha256_hex(m)).collect();
    let ids: BTreeSet<String> = sandbox
        .list()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, wire);

    let again = json_lines(&sandbox.ok(&["--config", config, "import", "--json", spec]));
    assert_eq!(
        (again[0]["new"].as_u64(), again[0]["duplicates"].as_u64()),
        (Some(0), Some(0))
    );

    let backup = run.backup();
    let account = &backup["accounts"][0];
    assert_eq!(account["on_server"], messages.len() as u64, "{account}");
    assert_eq!(
        (
            account["new_messages"].as_u64(),
            account["fetched_bytes"].as_u64()
        ),
        (Some(0), Some(0)),
        "{account}"
    );
    assert_eq!(sandbox.list().len(), messages.len());

    let restored = sandbox.path().join("restored");
    let to = format!("maildir:{}", restored.display());
    sandbox.ok(&["restore", "--to", &to, "--folders"]);
    let by_hash =
        |dir: &Path| -> BTreeSet<String> { files_in(dir).iter().map(|b| sha256_hex(b)).collect() };
    assert_eq!(by_hash(&restored), wire, "every message was in an Inbox");
    assert_eq!(
        by_hash(&restored.join(".Archives.2015")),
        BTreeSet::from([sha256_hex(&messages[3])])
    );
    assert_eq!(
        by_hash(&restored.join(".Archives")),
        BTreeSet::from([sha256_hex(&messages[4])])
    );
    assert_eq!(
        by_hash(&restored.join(".Trash")),
        BTreeSet::from([sha256_hex(&messages[2])])
    );
    assert!(restored.join(".Archives.2015/maildirfolder").is_file());
    let rerun = sandbox.ok(&["restore", "--to", &to, "--folders"]);
    assert!(rerun.contains("0 restored"), "{rerun}");

    // And into IMAP folders of the same Dovecot (its Maildir++ tree shows where they went).
    let imap = format!(
        "imaps://{}@127.0.0.1:{}/Restored",
        dovecot.user(),
        dovecot.imaps_port
    );
    let ca = dovecot.ca_pem();
    for _ in 0..2 {
        let out = sandbox
            .command()
            .args([
                "restore",
                "--to",
                &imap,
                "--folders",
                "--ca-file",
                ca.to_str().unwrap(),
            ])
            .env("POPVAULT_PASSWORD", dovecot.password())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server_folder = |name: &str| files_in(&dovecot.maildir().join(name)).len();
    assert_eq!(server_folder(".Restored"), messages.len());
    assert_eq!(server_folder(".Restored.Archives.2015"), 1);
    assert_eq!(server_folder(".Restored.Archives"), 1);
    assert_eq!(server_folder(".Restored.Trash"), 1);

    // What Thunderbird deleted comes in with --include-deleted, marked so.
    let with_deleted = json_lines(&sandbox.ok(&[
        "--config",
        config,
        "import",
        "--json",
        "--include-deleted",
        spec,
    ]));
    assert_eq!(with_deleted[0]["thunderbird"]["deleted_skipped"], 0);
    assert_eq!(with_deleted[0]["duplicates"], 3, "{}", with_deleted[0]);
    let deleted_lines = sandbox
        .list()
        .iter()
        .flat_map(|m| m["sources"].as_array().unwrap().clone())
        .filter(|s| s["deleted"] == true)
        .count();
    assert_eq!(deleted_lines, 3);
}

/// After Thunderbird compacts a folder its own header lines are rewritten: those messages are
/// kept as stored, say so, and record no UIDL, so the backup fetches the server's bytes.
#[test]
fn a_compacted_folder_is_kept_as_stored_and_its_mail_is_fetched_again() {
    let run = fetched_by_thunderbird("read 1\ndelete 2\ncompact");
    let (sandbox, messages, spec) = (&run.sandbox, &run.messages, &run.spec);
    let config = run.config.to_str().unwrap();
    let import = json_lines(&sandbox.ok(&["--config", config, "import", "--json", spec]));
    let tb = &import[0]["thunderbird"];
    let compacted = tb["kept_as_stored"]["compacted"].as_u64().unwrap_or(0);
    assert!(compacted >= messages.len() as u64 - 1, "{tb}");
    assert_eq!(
        tb["deleted_skipped"], 0,
        "compaction removed the deleted message: {tb}"
    );
    // Only the copy in Trash, written by a move and not compacted, is recovered.
    assert_eq!(
        tb["pop3_uidls"]["alice"],
        messages.len() as u64 - compacted,
        "{tb}"
    );
    let kept: Vec<serde_json::Value> = sandbox
        .list()
        .iter()
        .flat_map(|m| m["sources"].as_array().unwrap().clone())
        .filter(|s| s["kept_as_stored"] == "compacted")
        .collect();
    assert_eq!(kept.len() as u64, compacted);
    run.backup();
    let wire: BTreeSet<String> = messages.iter().map(|m| sha256_hex(m)).collect();
    let ids: BTreeSet<String> = sandbox
        .list()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.is_superset(&wire),
        "the backup fetched what was not recovered"
    );
}

const KEYS: &str = "X-Mozilla-Keys:                                                                                 ";

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Thunderbird 140+ on Linux: the wire message with its CRLFs turned into LF, after its lines.
fn tb140(uidl: &str, status: &str, wire: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "X-Account-Key: account1\nX-UIDL: {uidl}\nX-Mozilla-Status: {status}\nX-Mozilla-Status2: 00000000\n{KEYS}\n"
    )
    .into_bytes();
    out.extend(
        String::from_utf8_lossy(wire)
            .replace("\r\n", "\n")
            .into_bytes(),
    );
    out
}

fn mboxrd_quote(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in stored.split_inclusive(|&b| b == b'\n') {
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        if line[gts..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out
}

/// Profiles as older Thunderbirds and Windows write them, built from their documented formats:
/// what can be recovered exactly is, the rest is kept as stored with the reason, and nothing
/// that is not a folder is read as one.
#[test]
fn older_versions_windows_and_odd_trees_are_read_by_their_rules() {
    let sandbox = Sandbox::new();
    let home_tb = sandbox.path().join(".thunderbird");
    let profile = home_tb.join("x1y2z3.default-esr");
    write(
        &home_tb.join("profiles.ini"),
        b"[Install11457493C5A56847]\nDefault=x1y2z3.default-esr\nLocked=1\n\n[Profile0]\nName=default-esr\nIsRelative=1\nPath=x1y2z3.default-esr\nDefault=1\n\n[General]\nStartWithLastProfile=1\nVersion=2\n",
    );
    write(
        &profile.join("prefs.js"),
        br#"// Mozilla User Preferences
user_pref("mail.account.account1.server", "server1");
user_pref("mail.account.account2.server", "server2");
user_pref("mail.accountmanager.accounts", "account1,account2");
user_pref("mail.server.server1.directory-rel", "[ProfD]Mail/pop.example.com");
user_pref("mail.server.server1.directory", "C:\\Users\\alice\\AppData\\Roaming\\Thunderbird\\Profiles\\x1y2z3.default-esr\\Mail\\pop.example.com");
user_pref("mail.server.server1.hostname", "pop.example.com");
user_pref("mail.server.server1.type", "pop3");
user_pref("mail.server.server1.userName", "alice");
user_pref("mail.server.server2.directory-rel", "[ProfD]Mail/Local Folders");
user_pref("mail.server.server2.hostname", "Local Folders");
user_pref("mail.server.server2.type", "none");
user_pref("mail.server.server2.userName", "nobody");
"#,
    );
    let wire = |n: u32, body: &str| -> Vec<u8> {
        format!("From: s{n}@example.org\r\nSubject: old {n}\r\nDate: Mon, {n} Jan 2011 10:00:00 +0000\r\n\r\n{body}").into_bytes()
    };
    let server = profile.join("Mail/pop.example.com");
    // Thunderbird 115: `From - ` and ctime (space-padded day, LF), mboxo quoting, LF trailer.
    let clean = wire(1, "no quoting needed\r\n>>From stays\r\n");
    let ambiguous = wire(2, "From the wire\r\n");
    let mut inbox = Vec::new();
    for (uidl, m) in [("u1", &clean), ("u2", &ambiguous)] {
        inbox.extend_from_slice(b"From - Mon Jan  3 10:00:00 2011\n");
        let stored = tb140(uidl, "0001", m);
        for line in stored.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b"From ") {
                inbox.push(b'>');
            }
            inbox.extend_from_slice(line);
        }
        inbox.extend_from_slice(b"\n");
    }
    write(&server.join("Inbox"), &inbox);
    write(
        &server.join("Inbox.msf"),
        b"// <!-- <mdb:mork:z v=\"1.4\"/> -->",
    );
    write(&server.join("popstate.dat"), b"# POP3 State File\n# This is a generated file!  Do not edit.\n\n*pop.example.com alice\nk u1 1294048800\nk u2 1294048800\nk u3 1294048800");
    // Thunderbird 128: a bare `From ` CRLF line; and a partial (headers only) download.
    let newer = wire(3, "From a 128 body\r\n");
    let mut archive = b"From \r\n".to_vec();
    archive.extend(mboxrd_quote(&tb140("u3", "0000", &newer)));
    archive.extend_from_slice(b"\r\n");
    let headers_only = wire(4, "");
    archive.extend_from_slice(b"From - Tue Jan 04 10:00:00 2011\r\n");
    archive.extend(mboxrd_quote(&tb140("u4", "0400", &headers_only)));
    archive.extend_from_slice(b"\r\n");
    // A subfolder whose parent folder file is gone, and files that are not folders.
    write(&server.join("Archives.sbd/2011"), &archive);
    // A message of an account the profile no longer has (its key is unknown): its UIDL may be
    // another server's, so none is recorded for this one.
    let elsewhere = wire(6, "from a removed account\r\n");
    let mut old = b"From - Wed Jan 05 10:00:00 2011\r\n".to_vec();
    old.extend(mboxrd_quote(
        &String::from_utf8(tb140("u1", "0000", &elsewhere))
            .unwrap()
            .replace("account1", "account9")
            .into_bytes(),
    ));
    old.extend_from_slice(b"\r\n");
    write(&server.join("Old"), &old);
    write(&server.join("filterlog.html"), b"<html></html>");
    write(&server.join("Junk"), b"\x00\x01 not an mbox");
    // Windows: CRLF kept, in a maildir store of Local Folders.
    let windows = wire(5, "written on Windows\r\n");
    let mut stored =
        format!("X-Mozilla-Status: 0005\r\nX-Mozilla-Status2: 00000000\r\n{KEYS}\r\n").into_bytes();
    stored.extend_from_slice(&windows);
    write(
        &profile.join("Mail/Local Folders/Saved/cur/1294048800.M1P1Q1.host.eml"),
        &stored,
    );
    fs::create_dir_all(profile.join("Mail/Local Folders/Saved/tmp")).unwrap();
    write(&profile.join("Mail/Local Folders/Unsent Messages"), b"");

    // No directory: the default profile of ~/.thunderbird.
    let import = json_lines(&sandbox.ok(&["import", "--json", "thunderbird:"]));
    let tb = &import[0]["thunderbird"];
    assert_eq!(
        tb["profile"],
        fs::canonicalize(&profile).unwrap().to_str().unwrap()
    );
    assert_eq!(tb["recovered"], 4, "{tb}");
    assert_eq!(tb["kept_as_stored"]["mboxo-quoting"], 1, "{tb}");
    assert_eq!(tb["kept_as_stored"]["partial"], 1, "{tb}");
    assert!(
        tb["pop3_uidls"].as_object().unwrap().is_empty(),
        "no popvault account matches: {tb}"
    );
    assert!(
        import[0]["warnings"]
            .to_string()
            .contains("alice@pop.example.com"),
        "{}",
        import[0]
    );
    let folders = folder_counts(tb, "alice@pop.example.com");
    assert_eq!(
        folders.keys().collect::<Vec<_>>(),
        ["Archives/2011", "Inbox", "Old"],
        "{folders:?}"
    );
    assert_eq!(folder_counts(tb, "Local Folders")["Saved"], (1, 0));

    // With the account in the config: the UIDLs of account1's recovered messages (u1, u3) are
    // recorded, not the removed account's.
    let config = sandbox.path().join("config.toml");
    fs::write(
        &config,
        "[[account]]\nname = \"home\"\nserver = \"pop3s://alice@POP.example.com\"\n",
    )
    .unwrap();
    let mut perms = fs::metadata(&config).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&config, perms).unwrap();
    let config = config.to_str().unwrap();
    let again = json_lines(&sandbox.ok(&["--config", config, "import", "--json", "thunderbird:"]));
    assert_eq!(
        again[0]["thunderbird"]["pop3_uidls"]["home"], 2,
        "{}",
        again[0]
    );
    let uidl_lines: Vec<String> = sandbox
        .list()
        .iter()
        .flat_map(|m| m["sources"].as_array().unwrap().clone())
        .filter(|s| s["kind"] == "pop3")
        .map(|s| s["uidl"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uidl_lines.len(), 2, "{uidl_lines:?}");
    assert!(
        !sandbox
            .list()
            .iter()
            .any(|m| m["subject"] == "old 6" && m["sources"].to_string().contains("\"pop3\""))
    );

    let ids: BTreeSet<String> = sandbox
        .list()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    for exact in [&clean, &newer, &windows] {
        assert!(
            ids.contains(&sha256_hex(exact)),
            "{}",
            String::from_utf8_lossy(exact)
        );
    }
    assert!(!ids.contains(&sha256_hex(&ambiguous)));
    let listed = sandbox.list();
    let reason_of = |subject: &str| -> Option<String> {
        let m = listed.iter().find(|m| m["subject"] == subject)?;
        m["sources"][0]["kept_as_stored"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(reason_of("old 2").as_deref(), Some("mboxo-quoting"));
    assert_eq!(reason_of("old 4").as_deref(), Some("partial"));
    assert_eq!(reason_of("old 1"), None);

    // Bad input: one line saying what is wrong, nothing written.
    for (spec, says) in [
        (
            format!("thunderbird:{}", sandbox.path().join("nowhere").display()),
            "nowhere",
        ),
        (
            format!("thunderbird:{}", server.display()),
            "not a Thunderbird profile",
        ),
    ] {
        let out = sandbox.run(&["import", &spec]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{spec}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Trees that are not as Thunderbird leaves them: every folder is still found once, and what
/// is skipped is said.
#[test]
fn odd_folder_trees_lose_no_folder_and_loop_no_link() {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::new();
    let profile = sandbox.path().join("p");
    write(&profile.join("prefs.js"), b"user_pref(\"mail.server.server1.type\", \"none\");\nuser_pref(\"mail.server.server1.directory-rel\", \"[ProfD]Mail/Local Folders\");\n");
    let local = profile.join("Mail/Local Folders");
    let message = |n: u32| -> Vec<u8> {
        let wire = format!("From: a@example.org\r\nSubject: odd {n}\r\n\r\nbody {n}\r\n");
        let mut out = b"From - Tue Dec 01 10:00:00 2026\r\n".to_vec();
        out.extend(mboxrd_quote(&tb140(
            &format!("o{n}"),
            "0000",
            wire.as_bytes(),
        )));
        out.extend_from_slice(b"\r\n");
        out
    };
    // Names that look like other files, one not in UTF-8, a subfolder under a parent that is
    // not a folder, and an mbox after a stray line.
    write(&local.join("node.js"), &message(1));
    write(&local.join("Taxes.bak"), &message(2));
    write(
        &local.join(std::ffi::OsStr::from_bytes(b"Caf\xe9")),
        &message(3),
    );
    write(&local.join("Notes"), b"just some text\n");
    write(&local.join("Notes.sbd/Kid"), &message(4));
    let mut stray = b"\r\n".to_vec();
    stray.extend(message(5));
    write(&local.join("Stray"), &stray);
    std::os::unix::fs::symlink(".", local.join("node.js.sbd")).unwrap();
    // The last message of a folder cut short: kept as stored, no UIDL.
    let mut cut = message(6);
    cut.truncate(cut.len() - 10);
    write(&local.join("Cut"), &cut);

    let out = sandbox
        .command()
        .args([
            "import",
            "--json",
            &format!("thunderbird:{}", profile.display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folders = folder_counts(&report["thunderbird"], "Local Folders");
    let names: Vec<&str> = folders.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Caf\u{fffd}",
            "Cut",
            "Notes/Kid",
            "Stray",
            "Taxes.bak",
            "node.js"
        ],
        "{report}"
    );
    assert!(folders.values().all(|&(n, _)| n == 1), "{folders:?}");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("Notes: not an mbox folder"), "{warnings}");
    assert!(warnings.contains("link loop"), "{warnings}");
    assert!(
        warnings.contains("bytes before the first From line")
            || report["thunderbird"]["recovered"] == 5,
        "{report}"
    );
    assert_eq!(
        report["thunderbird"]["kept_as_stored"]["truncated"], 1,
        "{report}"
    );
    assert_eq!(report["new"], 6, "{report}");
    let again = sandbox.ok(&[
        "import",
        "--json",
        &format!("thunderbird:{}", profile.display()),
    ]);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (again["new"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    // Folder names beyond ASCII go into a Maildir++ tree in modified UTF-7.
    let restored = sandbox.path().join("r");
    sandbox.ok(&[
        "restore",
        "--to",
        &format!("maildir:{}", restored.display()),
        "--folders",
    ]);
    let made: Vec<String> = fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files_in(&restored.join(".Notes.Kid")).len(), 1, "{made:?}");
    assert_eq!(files_in(&restored.join(".Caf&,,0-")).len(), 1);
    assert_eq!(files_in(&restored.join(".Taxes_bak")).len(), 1);
}
