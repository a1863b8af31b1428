//! The local index and `popvault search`: it answers as the catalog does however it came to
//! be (kept up to date, rebuilt, killed midway, corrupt, from another version), and search
//! finds what an independent reader of the decoded corpus finds.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use crate::support::{Sandbox, corpus_dir, kill_9_after, write_maildir};

fn index_dir(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.path().join(".cache/popvault/index")
}

fn index_file(sandbox: &Sandbox) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(index_dir(sandbox))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn search_ids(sandbox: &Sandbox, words: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["search", "--json", "--limit", "1000000"];
    args.extend_from_slice(words);
    sandbox
        .ok(&args)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Every corpus message (with its odd charsets and broken MIME), imported one file each.
fn corpus_sandbox() -> (Sandbox, Vec<std::path::PathBuf>) {
    let sandbox = Sandbox::new();
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    let mut args = vec!["import".to_string()];
    args.extend(files.iter().map(|f| format!("eml:{}", f.display())));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sandbox.ok(&args);
    (sandbox, files)
}

/// Files whose text Python's email package does not reach and popvault does, on purpose.
const READ_ONLY_BY_POPVAULT: &[&str] = &[
    // Python takes its multipart/alternative for a single part (its boundary parameter is
    // unquoted and holds `=`) and so never decodes the base64 UTF-16 text parts that popvault reads.
    "spamassassin-spam-utf16.eml",
];

#[test]
fn search_finds_what_an_independent_reader_of_the_decoded_corpus_finds() {
    let (sandbox, files) = corpus_sandbox();
    let mut id_of_file: HashMap<String, String> = HashMap::new();
    for m in sandbox.list() {
        for s in m["sources"].as_array().unwrap() {
            if let Some(path) = s["path"].as_str() {
                id_of_file.insert(path.to_string(), m["id"].as_str().unwrap().to_string());
            }
        }
    }
    let helper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/mail_words.py");
    let out = Command::new("python3")
        .arg(&helper)
        .args(&files)
        .output()
        .expect("python3 is needed for the independent reader");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per message: the words any reader must find it by, and those it may be found by.
    let mut must: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut may: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = std::fs::canonicalize(v["file"].as_str().unwrap()).unwrap();
        let id = id_of_file[file.to_str().unwrap()].clone();
        let set = |key: &str| -> BTreeSet<String> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect()
        };
        must.entry(id.clone()).or_default().extend(set("plain"));
        may.entry(id).or_default().extend(set("all"));
    }
    // Words of five letters or more found in 1 to 25 messages: the distinctive ones a user
    // searches by. Every seventh, for a test of a few seconds.
    let mut frequency: HashMap<&str, usize> = HashMap::new();
    for words in must.values() {
        for w in words {
            if w.len() >= 5 && w.bytes().all(|b| b.is_ascii_lowercase()) {
                *frequency.entry(w).or_default() += 1;
            }
        }
    }
    let mut candidates: Vec<&str> = frequency
        .iter()
        .filter(|(_, n)| (1..=25).contains(*n))
        .map(|(w, _)| *w)
        .collect();
    candidates.sort_unstable();
    let chosen: Vec<&str> = candidates.iter().step_by(7).copied().collect();
    assert!(chosen.len() >= 30, "{} words", chosen.len());
    let file_of: HashMap<&String, &str> = id_of_file
        .iter()
        .map(|(f, id)| (id, f.rsplit('/').next().unwrap()))
        .collect();
    let mut wrong = Vec::new();
    for word in &chosen {
        let found = search_ids(&sandbox, &[word]);
        let expected: BTreeSet<String> = must
            .iter()
            .filter(|(_, w)| w.contains(*word))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expected.difference(&found) {
            wrong.push(format!("{word:?} not found in {}", file_of[id]));
        }
        for id in &found {
            if !may[id].contains(*word) && !READ_ONLY_BY_POPVAULT.contains(&file_of[id]) {
                wrong.push(format!(
                    "{word:?} found in {}, which has no such word",
                    file_of[id]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Case and accents do not matter; all words must appear; a phrase is a phrase.
    let mail = sandbox.path().join("plumber.eml");
    std::fs::write(
        &mail,
        "From: Jürgen Klempner <j@example.org>\r\nSubject: Rechnung\r\nDate: Tue, 3 Mar 2015 10:00:00 +0100\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The <b>invoice</b> from the plumber: caf\u{e9} bill</p>\r\n",
    )
    .unwrap();
    sandbox.ok(&["import", &format!("eml:{}", mail.display())]);
    let one = search_ids(&sandbox, &["INVOICE", "plumber"]);
    assert_eq!(one.len(), 1);
    assert_eq!(search_ids(&sandbox, &["klempner", "rechnung"]), one);
    assert_eq!(search_ids(&sandbox, &["jurgen", "cafe"]), one);
    assert_eq!(search_ids(&sandbox, &["\"invoice from the plumber\""]), one);
    assert!(search_ids(&sandbox, &["\"plumber from the invoice\""]).is_empty());
    assert!(search_ids(&sandbox, &["invoice", "nosuchwordanywhere"]).is_empty());
    // Filters: dates and --limit.
    assert_eq!(
        search_ids(
            &sandbox,
            &["plumber", "--since", "2015-03-01", "--until", "2015-03-04"]
        ),
        one
    );
    assert!(search_ids(&sandbox, &["plumber", "--since", "2016-01-01"]).is_empty());
    let text = sandbox.ok(&["search", "plumber"]);
    assert!(text.contains("Rechnung"), "{text}");
    // A user can read the index with an older SQLite (Python's here; Debian 12 has 3.40).
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); print(db.execute(\"SELECT count(*) FROM text WHERE text MATCH 'klempner'\").fetchone()[0])",
        ])
        .arg(index_file(&sandbox))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    assert_eq!(
        sandbox
            .run(&["search", "--limit", "0", "plumber"])
            .status
            .code(),
        Some(2)
    );

    // HTML with an entity before Cyrillic (a reader once panicked there, for every later
    // search), read while its pack is away: found once the pack is back.
    let mail = sandbox.path().join("cyrillic.eml");
    std::fs::write(
        &mail,
        "Subject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Q&amp;Привет мир</p>\r\n",
    )
    .unwrap();
    sandbox.ok(&["import", &format!("eml:{}", mail.display())]);
    let packs = sandbox.archive().join("packs");
    let newest = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let away = sandbox.path().join("away.pack");
    std::fs::rename(&newest, &away).unwrap();
    let out = sandbox.run(&["search", "привет"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not be read"),
        "{out:?}"
    );
    std::fs::rename(&away, &newest).unwrap();
    assert_eq!(search_ids(&sandbox, &["ПРИВЕТ"]).len(), 1);
}

/// `list --json` and `search --json` of an index kept up to date commit by commit, of one
/// built at once, and of one rebuilt after a kill -9, a corruption or a schema change agree.
#[test]
fn the_index_answers_alike_however_it_was_made() {
    let sandbox = Sandbox::new();
    let answers = |cache: Option<&std::path::Path>| {
        let run = |args: &[&str]| {
            let mut c = sandbox.command();
            if let Some(cache) = cache {
                c.env("XDG_CACHE_HOME", cache);
            }
            let out = c.args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        };
        let list = run(&["list", "--json"]);
        let search = run(&["search", "--json", "--limit", "100000", "message"]);
        // The running totals too (where the index is kept differs, by design).
        let stats = run(&["stats", "--json"]);
        let mut totals: serde_json::Value = serde_json::from_str(&stats.0).unwrap();
        totals
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("index_"));
        let list_and_totals = format!("{}{totals}\n", list.0);
        (list_and_totals, search.0, list.1 + &search.1 + &stats.1)
    };
    // Three imports, the index updated after each (kept up to date), then one of the first
    // mailbox's messages again from another place (each a second sighting).
    for (n, seed) in [(3_000u64, 1u64), (2_000, 2), (1_500, 4)] {
        let dir = sandbox.path().join(format!("mail{seed}"));
        write_maildir(&dir, n, seed);
        sandbox.ok(&["import", &format!("maildir:{}", dir.display())]);
        answers(None);
    }
    let again = sandbox.path().join("mail1-again");
    write_maildir(&again, 3_000, 1);
    sandbox.ok(&["import", &format!("maildir:{}", again.display())]);
    let (list, search, _) = answers(None);
    assert_eq!(list.lines().count(), 6_500 + 1);
    assert!(
        list.contains("\"messages\":9500"),
        "{}",
        list.lines().last().unwrap()
    );
    let verify = sandbox.command().arg("verify").output().unwrap();
    assert!(verify.status.success());
    assert!(
        !String::from_utf8_lossy(&verify.stderr).contains("disagreed"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        search.lines().count() > 100,
        "the generator's mail says message"
    );
    // Built at once, from nothing.
    let fresh = sandbox.path().join("other-cache");
    assert_eq!(
        answers(Some(&fresh)),
        (list.clone(), search.clone(), String::new())
    );

    // Killed midway through a build from nothing, then used: the same answers.
    std::fs::remove_dir_all(index_dir(&sandbox)).unwrap();
    let mut killed = 0;
    for millis in [50, 150, 400] {
        let mut c = sandbox.command();
        c.args(["search", "message"]);
        killed += kill_9_after(&mut c, millis) as u32;
    }
    assert!(killed > 0, "no kill landed while the index was being built");
    let (l, s, _) = answers(None);
    assert_eq!((l, s), (list.clone(), search.clone()));

    // A corrupt index is rebuilt, and said so in a line.
    let file = index_file(&sandbox);
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0x5a; len.min(1 << 20)]).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    let (l, s, notes) = answers(None);
    assert_eq!((l, s), (list.clone(), search.clone()));
    assert!(
        notes.contains("note: rebuilt the local index") && notes.contains("unreadable"),
        "{notes}"
    );
    assert_eq!(notes.lines().count(), 1, "{notes}");

    // One of another schema (an older popvault's, with other tables) is rebuilt too.
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); db.execute(\"UPDATE meta SET value='0' WHERE key='schema'\"); db.execute('ALTER TABLE messages DROP COLUMN subject_lc'); db.commit()",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let (l, s, notes) = answers(None);
    assert_eq!((l, s), (list.clone(), search.clone()));
    assert!(notes.contains("another version of popvault"), "{notes}");

    // A deleted one is built again without a word.
    std::fs::remove_dir_all(index_dir(&sandbox)).unwrap();
    assert_eq!(answers(None), (list, search, String::new()));
}

/// `cat` and `list` read the index, `verify` checks it against the catalog, and an archive
/// the index has never seen (made before it existed) is indexed on first use.
#[test]
fn cat_list_and_verify_use_the_index_and_a_repair_rebuilds_it() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path().join("mail");
    let written = write_maildir(&dir, 20, 9);
    sandbox.ok(&["import", &format!("maildir:{}", dir.display())]);
    // As an archive from before the index: no index at all.
    std::fs::remove_dir_all(sandbox.path().join(".cache")).unwrap();
    let listed = sandbox.list();
    assert_eq!(listed.len(), 20);
    let id = listed[0]["id"].as_str().unwrap();
    let bytes = sandbox.cat(&id[..10]);
    assert!(written.contains(&bytes));
    let out = sandbox.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An index that says a message is elsewhere than the catalog does is caught by verify.
    let file = index_file(&sandbox);
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); db.execute('UPDATE messages SET offset = offset + 1 WHERE n = 1'); db.commit()",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    // It is a cache: verify says so, builds it again, and the archive is sound (exit 0).
    let out = sandbox.run(&["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: the local index") && stderr.contains("disagreed with the catalog"),
        "{stderr}"
    );
    let out = sandbox.run(&["verify"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // verify --full re-derives it from the catalog.
    let out = sandbox.run(&["verify", "--full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = sandbox.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An archive made again at the same place, with other mail under the same commit numbers
    // and segment names, is not taken for the old one.
    std::fs::remove_dir_all(sandbox.archive()).unwrap();
    let other = sandbox.path().join("other");
    let others = write_maildir(&other, 5, 77);
    sandbox.ok(&["import", &format!("maildir:{}", other.display())]);
    let listed = sandbox.list();
    assert_eq!(listed.len(), 5);
    for m in &listed {
        assert!(others.contains(&sandbox.cat(m["id"].as_str().unwrap())));
    }
}

/// A row of the local index that does not read back (what SQLite cannot see: a bit flipped in
/// a value) or that places a message wrongly is never taken at its word: restore and export
/// fail once with a line, the index is deleted, and the next run, from a new index, puts every
/// message. (Before, a message with an unreadable source line was left out, exit 0.)
#[test]
fn index_rows_that_do_not_read_back_or_misplace_a_message_are_damage_not_answers() {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    let messages = write_maildir(&maildir, 12, 41);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);
    let damage = |sql: &str| {
        sandbox.ok(&["list"]);
        let db = rusqlite::Connection::open(index_file(&sandbox)).unwrap();
        assert_eq!(db.execute(sql, []).unwrap(), 1, "{sql}");
    };
    let mbox = sandbox.path().join("out.mbox");
    let restore = ["restore", "--to", &format!("mbox:{}", mbox.display())];
    let tar = sandbox.path().join("a.tar").display().to_string();
    let export = ["export", tar.as_str()];
    for (sql, command) in [
        (
            "UPDATE messages SET offset = offset + 1 WHERE n = 7",
            &restore[..],
        ),
        ("UPDATE lines SET source = '{' WHERE seq = 3", &restore[..]),
        (
            "UPDATE messages SET envelope = 'x' WHERE n = 5",
            &export[..],
        ),
    ] {
        damage(sql);
        let failed = sandbox.run(command);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success(), "{sql}: {stderr}");
        assert!(stderr.contains("local index"), "{sql}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            std::fs::read_dir(index_dir(&sandbox)).unwrap().all(|e| e
                .unwrap()
                .path()
                .extension()
                .is_none_or(|x| x != "sqlite")),
            "{sql}: the index is deleted"
        );
        sandbox.ok(command);
    }
    // Every message once in the mbox, however the runs before were cut short.
    let mut reader = popvault::import::mbox::MboxReader::new(
        std::io::BufReader::new(std::fs::File::open(&mbox).unwrap()),
        true,
    );
    let mut restored = Vec::new();
    while let Some(m) = reader.next_message().unwrap() {
        restored.push(m.bytes);
    }
    restored.sort();
    let mut messages = messages;
    messages.sort();
    assert_eq!(restored, messages);
}
