//! The shared corpus of odd real-world mail: import, then every message comes back byte for byte,
//! and the catalog's Message-ID and Date agree with an independent parser (Python's email package,
//! in corpus/expect.tsv) wherever that parser could read them.

use std::collections::HashMap;
use std::process::Command;

use crate::support::{Sandbox, corpus_dir, sha256_hex};

struct Expect {
    file: String,
    kind: String,
    sha256: String,
    message_id: String,
    date_utc: String,
}

fn expectations() -> Vec<Expect> {
    let text = std::fs::read_to_string(corpus_dir().join("expect.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Expect {
                file: f[0].into(),
                kind: f[1].into(),
                sha256: f[3].into(),
                message_id: f[4].into(),
                date_utc: f[5].into(),
            }
        })
        .collect()
}

/// Files whose malformed headers popvault reads differently from Python, on purpose.
const KNOWN_DISAGREEMENTS: &[(&str, &str)] = &[
    (
        "mikel-mail-plain_emails-raw_email_double_at_in_header.eml",
        "Message-ID <a@b@c@d> is not RFC 5322; Python cuts it at the second @, popvault keeps it whole",
    ),
    (
        "mimekit-messages-disposition-notification_anonymized.eml",
        "Date `00:19:00 (EDT) -0400`: Python drops the zone after the comment (00:19Z); popvault reads 04:19Z",
    ),
    (
        "notmuch-crypto-encrypted-signed.eml",
        "Date `06:09:22 PM EDT` is not RFC 5322; Python ignores PM and the zone (06:09Z); popvault records it as unparsable",
    ),
];

/// expect.tsv escapes; `None` for values with raw non-UTF-8 bytes, which are not compared.
fn unescape(s: &str) -> Option<String> {
    if s.contains("\\x") {
        return None;
    }
    Some(
        s.replace("\\t", "\t")
            .replace("\\n", "\n")
            .replace("\\r", "\r")
            .replace("\\\\", "\\"),
    )
}

#[test]
fn every_corpus_message_cats_back_byte_exact_and_metadata_agrees_with_reference() {
    let sandbox = Sandbox::new();
    let expects: Vec<Expect> = expectations()
        .into_iter()
        .filter(|e| e.kind == "message")
        .collect();
    assert!(expects.len() > 300, "corpus not found");
    let mut args = vec!["import".to_string()];
    args.extend(
        expects
            .iter()
            .map(|e| format!("eml:{}", corpus_dir().join(&e.file).display())),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sandbox.ok(&args);

    let listed = sandbox.list();
    let mut by_path: HashMap<String, &serde_json::Value> = HashMap::new();
    for m in &listed {
        for s in m["sources"].as_array().unwrap() {
            by_path.insert(s["path"].as_str().unwrap().to_string(), m);
        }
    }
    let (mut ids_compared, mut dates_compared) = (0, 0);
    let mut disagreements = Vec::new();
    for e in &expects {
        let path = std::fs::canonicalize(corpus_dir().join(&e.file)).unwrap();
        let original = std::fs::read(&path).unwrap();
        assert_eq!(
            sha256_hex(&original),
            e.sha256,
            "{}: corpus file differs from expect.tsv",
            e.file
        );
        let m = by_path
            .get(path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not listed", e.file));
        assert_eq!(
            m["id"].as_str().unwrap(),
            e.sha256,
            "{}: id is not the SHA-256 of the bytes",
            e.file
        );
        assert_eq!(
            sandbox.cat(&e.sha256),
            original,
            "{}: cat differs from the original",
            e.file
        );

        if e.message_id != "none"
            && let Some(expected) = unescape(&e.message_id)
        {
            let expected = expected.split_whitespace().collect::<Vec<_>>().join(" ");
            if m["message_id"].as_str() != Some(expected.as_str()) {
                disagreements.push(format!(
                    "{} Message-ID: ours {} python {expected:?}",
                    e.file, m["message_id"]
                ));
            }
            ids_compared += 1;
        }
        if e.date_utc != "none" && e.date_utc != "invalid" {
            if m["date_utc"].as_str() != Some(e.date_utc.as_str()) {
                disagreements.push(format!(
                    "{} Date: ours {} python {:?}",
                    e.file, m["date_utc"], e.date_utc
                ));
            }
            dates_compared += 1;
        }
    }
    let unexplained: Vec<&String> = disagreements
        .iter()
        .filter(|d| {
            !KNOWN_DISAGREEMENTS
                .iter()
                .any(|(file, _)| d.starts_with(file))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "metadata differs from the reference:\n{unexplained:#?}"
    );
    assert!(
        ids_compared > 200 && dates_compared > 250,
        "compared {ids_compared} ids, {dates_compared} dates"
    );
}

/// Splits with tests/helpers/mbox_split.py (Python's mailbox module plus mboxrd unquoting).
fn python_split(path: &std::path::Path) -> Vec<Vec<u8>> {
    let out = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/mbox_split.py"))
        .arg(path)
        .output()
        .expect("python3 is needed for the independent mbox split");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| hex::decode(l).unwrap())
        .collect()
}

#[test]
fn every_corpus_mbox_splits_like_an_independent_reader() {
    let sandbox = Sandbox::new();
    let mboxes: Vec<Expect> = expectations()
        .into_iter()
        .filter(|e| e.kind == "mbox")
        .collect();
    assert!(mboxes.len() >= 10);
    for e in &mboxes {
        let path = std::fs::canonicalize(corpus_dir().join(&e.file)).unwrap();
        if e.file == "neomutt-cherry.mbox" {
            // Plain prose named .mbox: no line of it starts a message, so it is refused.
            let out = sandbox.run(&["import", &format!("mbox:{}", path.display())]);
            assert_eq!(out.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("is not an mbox file"), "{stderr}");
            assert_eq!(python_split(&path).len(), 0);
            // Given beside a good source, it is one error and the other still imports.
            let good = corpus_dir().join("git-sample.mbox");
            let other = Sandbox::new();
            let out = other.run(&[
                "import",
                &format!("mbox:{}", path.display()),
                &format!("mbox:{}", good.display()),
            ]);
            assert_eq!(out.status.code(), Some(4), "{out:?}");
            assert_eq!(other.list().len(), 18);
            continue;
        }
        sandbox.ok(&["import", &format!("mbox:{}", path.display())]);
        let listed = sandbox.list();
        let mut ours: Vec<(u64, String)> = Vec::new();
        for m in &listed {
            for s in m["sources"].as_array().unwrap() {
                if s["path"].as_str() == path.to_str() {
                    ours.push((
                        s["index"].as_u64().unwrap(),
                        m["id"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
        ours.sort();
        let ours: Vec<Vec<u8>> = ours.iter().map(|(_, id)| sandbox.cat(id)).collect();
        let reference = python_split(&path);
        match e.file.as_str() {
            // Python splits at every "From " line, so it cuts both messages at their unquoted
            // "From Russia with love" body line; popvault keeps them whole (see doc/FORMAT.md).
            "mimekit-mbox-unmunged.mbox" => {
                assert_eq!(reference.len(), 3);
                assert_eq!(ours.len(), 2);
                assert!(ours[1].windows(21).any(|w| w == b"From Russia with love"));
                assert!(ours[1].ends_with(b"What did Thunderbird do this time?\n"));
                // The BOM-prefixed first postmark that Python misses:
                assert!(ours[0].starts_with(b"From: Jeffrey Stedfast"));
            }
            _ => assert_eq!(
                ours, reference,
                "{}: split differs from Python's mailbox",
                e.file
            ),
        }
    }
}

#[test]
fn reimporting_the_same_sources_adds_nothing() {
    let sandbox = Sandbox::new();
    let mbox = format!("mbox:{}", corpus_dir().join("git-sample.mbox").display());
    let eml = format!("eml:{}", corpus_dir().join("cpython-msg_03.eml").display());
    sandbox.ok(&["import", &mbox, &eml]);
    let before = sandbox.list();
    let commits_before = std::fs::read_dir(sandbox.archive().join("commits"))
        .unwrap()
        .count();
    let out = sandbox.ok(&["import", &mbox, &eml]);
    assert!(out.contains("0 new"), "{out}");
    assert_eq!(sandbox.list(), before);
    assert_eq!(
        std::fs::read_dir(sandbox.archive().join("commits"))
            .unwrap()
            .count(),
        commits_before
    );
}

/// The recipe must read every real archive: one with nothing-new backup commits (a commit
/// without catalog lines), imports, and a repair (a retired pack); what it writes is what
/// `popvault cat` gives.
#[test]
fn the_recovery_recipe_in_format_md_recovers_every_message_without_popvault() {
    use crate::fake_pop3::{FakeServer, Fault, Mailbox};
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("mail");
    let messages = crate::support::write_maildir(&maildir, 40, 9);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);
    sandbox.ok(&[
        "import",
        &format!("mbox:{}", corpus_dir().join("git-sample.mbox").display()),
    ]);
    let pop: Vec<Vec<u8>> = (0..5)
        .map(|n| format!("Subject: pop {n}\r\n\r\nbody {n}\r\n").into_bytes())
        .collect();
    let uidls = Some((0..5).map(|n| format!("u{n}")).collect());
    let server = FakeServer::start(Mailbox::new(pop, uidls), vec![Fault::None; 3]);
    let url = format!("pop3://t@127.0.0.1:{}", server.port);
    for _ in 0..3 {
        let out = sandbox.run_with_password(&["backup", &url, "--tls", "none", "-q"], "x");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Damage the first pack, then repair: the recipe must skip the pack repair retired.
    let pack = std::fs::read_dir(sandbox.archive().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    let out = sandbox.run(&["repair"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let script_path = crate::support::recovery_script(sandbox.path());
    let out_dir = sandbox.path().join("recovered");
    let out = Command::new("python3")
        .arg(&script_path)
        .arg(sandbox.archive())
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recovery script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let listed = sandbox.list();
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), listed.len());
    assert!(listed.len() > 40);
    for m in &listed {
        let id = m["id"].as_str().unwrap();
        assert_eq!(
            std::fs::read(out_dir.join(format!("{id}.eml"))).unwrap(),
            sandbox.cat(id),
            "{id}"
        );
    }
    let recovered = messages
        .iter()
        .filter(|m| out_dir.join(format!("{}.eml", sha256_hex(m))).exists())
        .count();
    assert!(recovered >= 39, "all but the damaged message: {recovered}");
}

/// Maildir++ (Dovecot, Courier): `.Sent`, `.Drafts`, `.Archive.2019` are folders of the
/// Maildir; an import reads them all and records which folder each message was in.
#[test]
fn a_maildir_import_reads_every_maildir_plus_plus_folder() {
    let sandbox = Sandbox::new();
    let root = sandbox.path().join("Maildir");
    let inbox = crate::support::write_maildir(&root, 3, 41);
    let sent = crate::support::write_maildir(&root.join(".Sent"), 2, 45);
    let archived = crate::support::write_maildir(&root.join(".Archive.2019"), 2, 47);
    std::fs::create_dir_all(root.join(".not-a-folder")).unwrap();
    let out = sandbox.ok(&["import", &format!("maildir:{}", root.display())]);
    assert!(out.contains("7 messages"), "{out}");
    assert!(
        out.contains("folders: INBOX, .Archive.2019, .Sent"),
        "{out}"
    );
    let listed = sandbox.list();
    assert_eq!(listed.len(), 7);
    let folder_of = |m: &[u8]| {
        let id = sha256_hex(m);
        let entry = listed.iter().find(|e| e["id"] == id).unwrap();
        entry["sources"][0]["path"].as_str().unwrap().to_string()
    };
    assert!(folder_of(&sent[0]).ends_with("/Maildir/.Sent"));
    assert!(folder_of(&archived[1]).ends_with("/Maildir/.Archive.2019"));
    assert!(folder_of(&inbox[2]).ends_with("/Maildir"));
    let again = sandbox.ok(&["import", &format!("maildir:{}", root.display())]);
    assert!(again.contains("0 new"), "{again}");
    // `--account maildir:DIR` means the folders that `import maildir:DIR` read too.
    let selected = sandbox.ok(&[
        "list",
        "--json",
        "--account",
        &format!("maildir:{}", root.display()),
    ]);
    assert_eq!(selected.lines().count(), 7, "{selected}");
}

/// One notion of a message's date everywhere: `list` shows it in local time, `--since` and
/// `--until` days are local days, and a message without a Date header is dated by its first
/// Received header by the filters as by the restore.
#[test]
fn dates_are_local_days_and_one_date_serves_list_filters_and_restore() {
    let sandbox = Sandbox::new();
    let write = |name: &str, text: &[u8]| {
        let path = sandbox.path().join(name);
        std::fs::write(&path, text).unwrap();
        sandbox.ok(&["import", &format!("eml:{}", path.display())]);
    };
    write(
        "s.eml",
        b"Date: Sun, 01 Jan 2023 00:00:00 +0000\nFrom: a@x\nSubject: new year utc\n\nx\n",
    );
    write(
        "r.eml",
        b"Received: from a by b; Tue, 15 Jun 2010 10:00:00 +0000\nFrom: x@y\nSubject: undated\n\nhi\n",
    );
    let list = |args: &[&str]| {
        let out = sandbox
            .command()
            .env("TZ", "America/New_York")
            .arg("list")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Shown on 31 December in New York, so it is not "since 1 January" there.
    assert!(list(&[]).contains("2022-12-31 19:00"), "{}", list(&[]));
    assert!(!list(&["--since", "2023-01-01"]).contains("new year utc"));
    assert!(list(&["--until", "2023-01-01"]).contains("new year utc"));
    // Dated 2010 by its Received header, for the filter as for the restore.
    assert!(list(&["--until", "2020-01-01"]).contains("undated"));
    let restored = sandbox.path().join("restored");
    sandbox.ok(&[
        "restore",
        "--to",
        &format!("maildir:{}", restored.display()),
        "--until",
        "2020-01-01",
    ]);
    let files: Vec<_> = std::fs::read_dir(restored.join("cur")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let mtime = files[0]
        .as_ref()
        .unwrap()
        .metadata()
        .unwrap()
        .modified()
        .unwrap();
    let secs = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(secs, 1_276_596_000, "15 June 2010 10:00 UTC");
}

/// Prose such as "From what I heard, 3 people came." after a blank line stays in its message
/// (#13); a postmark without the blank line before it still splits, with a warning naming it.
#[test]
fn mbox_prose_from_lines_stay_in_their_message_and_doubtful_splits_are_named() {
    let sandbox = Sandbox::new();
    let first = "From: x@example.org\nSubject: party\n\nHello,\n\nFrom what I heard, 3 people came.\nFrom 9 to 5, they danced.\n";
    let mbox = format!(
        "From a@b Mon Jan  1 00:00:00 2024\n{first}\nFrom c@d Tue Jan  2 00:00:00 2024\nFrom: z@example.org\n\nbye\nFrom e@f Tue Jan  2 10:00:00 2024\nFrom: w@example.org\n\nend\n"
    );
    let path = sandbox.path().join("o2.mbox");
    std::fs::write(&path, &mbox).unwrap();
    let out = sandbox.run(&["import", &format!("mbox:{}", path.display())]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doubtful = mbox.find("From e@f").unwrap();
    assert!(
        stderr.contains("1 of its messages begin") && stderr.contains(&format!("byte {doubtful}")),
        "{stderr}"
    );
    let listed = sandbox.list();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let whole = listed
        .iter()
        .map(|m| sandbox.cat(m["id"].as_str().unwrap()))
        .any(|b| b == first.as_bytes());
    assert!(
        whole,
        "the first message lost its tail at a prose From line"
    );
}

/// An mbox as mutt writes it (`record`, `copy=yes`): Content-Length, and body lines left
/// unquoted. A body line shaped like a postmark stays in its message and `>From ` keeps its `>`.
#[test]
fn an_mbox_written_by_mutt_imports_byte_for_byte() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let mbox = dir.join("sent.mbox");
    std::fs::write(
        dir.join("muttrc"),
        format!(
            "set mbox_type=mbox\nset record={}\nset copy=yes\nset sendmail=/bin/true\nset from=alice@example.org\nset use_from=yes\n",
            mbox.display()
        ),
    )
    .unwrap();
    let body = "Hello,\nFrom Mon Jan  1 10:00:00 2024 this line looks like a postmark\n>From quoted already\n\nFrom what I heard, 3 people came.\n";
    for subject in ["first", "second"] {
        let mut mutt = Command::new("mutt")
            .args(["-n", "-F"])
            .arg(dir.join("muttrc"))
            .args(["-s", subject, "bob@example.org"])
            .env("HOME", dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("mutt is needed (bash tests/run installs it)");
        std::io::Write::write_all(&mut mutt.stdin.take().unwrap(), body.as_bytes()).unwrap();
        assert!(mutt.wait().unwrap().success());
    }
    sandbox.ok(&["import", &format!("mbox:{}", mbox.display())]);
    let listed = sandbox.list();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for m in &listed {
        let raw = sandbox.cat(m["id"].as_str().unwrap());
        let text = String::from_utf8_lossy(&raw);
        assert!(text.ends_with(&format!("\n\n{body}")), "{text}");
    }
}
