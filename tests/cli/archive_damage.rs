//! Damage to an archive: `verify --full` names every affected message and exits 3, and every
//! untouched message still comes back intact.

use std::fs;
use std::path::PathBuf;

use crate::support::{Sandbox, sha256_hex, write_maildir};

const DAMAGED: i32 = 3;

/// Two imports (two commits, two packs) of generated mail; returns the sandbox and both batches.
pub fn two_pack_archive() -> (Sandbox, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let sandbox = Sandbox::new();
    let first = write_maildir(&sandbox.path().join("one"), 60, 1);
    let second = write_maildir(&sandbox.path().join("two"), 60, 2);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("one").display()),
    ]);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("two").display()),
    ]);
    sandbox.ok(&["verify", "--full"]);
    (sandbox, first, second)
}

pub fn pack_of(sandbox: &Sandbox, commit: u32) -> PathBuf {
    let prefix = format!("{commit:08}-");
    fs::read_dir(sandbox.archive().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .unwrap()
}

pub fn stored_offset(sandbox: &Sandbox, id: &str) -> u64 {
    for entry in fs::read_dir(sandbox.archive().join("catalog")).unwrap() {
        let text = zstd::decode_all(fs::File::open(entry.unwrap().path()).unwrap()).unwrap();
        for line in String::from_utf8(text).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["id"] == id {
                return v["stored"]["offset"].as_u64().unwrap();
            }
        }
    }
    panic!("{id} not in catalog")
}

/// Runs `verify --full`, asserts exit 3, returns stderr.
fn verify_fails(sandbox: &Sandbox) -> String {
    let out = sandbox.run(&["verify", "--full"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(DAMAGED),
        "verify should report damage: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

pub fn assert_all_cat(sandbox: &Sandbox, messages: &[Vec<u8>]) {
    for m in messages {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}

#[test]
fn a_flipped_byte_names_that_message_and_the_rest_still_cat() {
    let (sandbox, first, second) = two_pack_archive();
    let victim = sha256_hex(&first[10]);
    let pack = pack_of(&sandbox, 1);
    let mut bytes = fs::read(&pack).unwrap();
    let at = stored_offset(&sandbox, &victim) as usize + 56 + 8;
    bytes[at] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    let stderr = verify_fails(&sandbox);
    assert!(
        stderr.contains(&format!("damaged message {victim}")),
        "{stderr}"
    );
    assert!(stderr.contains("subject \"message 10\""), "{stderr}");
    assert_eq!(stderr.matches("damaged message").count(), 1, "{stderr}");
    let cat = sandbox.run(&["cat", &victim]);
    assert!(
        !cat.status.success() && cat.stdout.is_empty(),
        "a damaged message must not be output"
    );
    let others: Vec<Vec<u8>> = first
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, m)| m.clone())
        .collect();
    assert_all_cat(&sandbox, &others);
    assert_all_cat(&sandbox, &second);
}

/// Cuts pack `commit` `extra` bytes into the record of `message`.
pub fn truncate_pack_into(sandbox: &Sandbox, commit: u32, message: &[u8], extra: u64) {
    let cut = stored_offset(sandbox, &sha256_hex(message)) + extra;
    fs::OpenOptions::new()
        .write(true)
        .open(pack_of(sandbox, commit))
        .unwrap()
        .set_len(cut)
        .unwrap();
}

#[test]
fn a_truncated_pack_names_the_lost_tail_and_the_rest_still_cat() {
    let (sandbox, first, second) = two_pack_archive();
    truncate_pack_into(&sandbox, 1, &first[50], 20);

    let stderr = verify_fails(&sandbox);
    for m in &first[50..] {
        assert!(
            stderr.contains(&sha256_hex(m)),
            "{} not named: {stderr}",
            sha256_hex(m)
        );
    }
    assert_all_cat(&sandbox, &first[..50]);
    assert_all_cat(&sandbox, &second);
}

#[test]
fn a_deleted_pack_names_all_its_messages_even_in_a_quick_verify() {
    let (sandbox, first, second) = two_pack_archive();
    fs::remove_file(pack_of(&sandbox, 1)).unwrap();
    let out = sandbox.run(&["verify"]);
    assert_eq!(out.status.code(), Some(DAMAGED));
    let stderr = verify_fails(&sandbox);
    assert!(stderr.contains("is missing"), "{stderr}");
    for m in &first {
        assert!(stderr.contains(&sha256_hex(m)));
    }
    assert_all_cat(&sandbox, &second);
}

#[test]
fn a_torn_catalog_segment_names_the_uncatalogued_messages() {
    let (sandbox, first, second) = two_pack_archive();
    let segment = sandbox.archive().join("catalog/00000002.jsonl.zst");
    let bytes = fs::read(&segment).unwrap();
    fs::write(&segment, &bytes[..bytes.len() - 30]).unwrap();

    let stderr = verify_fails(&sandbox);
    assert!(
        stderr.contains("catalog segment 00000002.jsonl.zst is damaged"),
        "{stderr}"
    );
    // The segment's only frame is lost: every message of that import is named, with its subject.
    for (n, m) in second.iter().enumerate() {
        let needle = format!(
            "uncatalogued message {} [] from \"Sender {n} <s{n}@example.org>\" subject \"message {n}\"",
            sha256_hex(m)
        );
        assert!(stderr.contains(&needle), "{needle} not in {stderr}");
    }
    assert_all_cat(&sandbox, &first);
}

#[test]
fn a_pack_whose_catalog_lines_are_all_lost_is_checked_once_among_many() {
    // Six imports, a pack each (that holds new mail); the first segment's lines are torn off, so pack 1 is named by
    // its commit but by no catalog line. Each of its records is uncatalogued once, and no
    // other pack is reported (once checked twice, in an order that changed from run to run).
    let sandbox = Sandbox::new();
    let mut first = Vec::new();
    for n in 1..=6u64 {
        let dir = sandbox.path().join(format!("m{n}"));
        let messages = write_maildir(&dir, 5, n);
        if n == 1 {
            first = messages;
        }
        sandbox.ok(&["import", &format!("maildir:{}", dir.display())]);
    }
    let segment = sandbox.archive().join("catalog/00000001.jsonl.zst");
    let bytes = fs::read(&segment).unwrap();
    fs::write(&segment, &bytes[..bytes.len() - 30]).unwrap();
    let out = sandbox.run(&["verify", "--full", "--json"]);
    assert_eq!(out.status.code(), Some(DAMAGED));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut uncatalogued: Vec<&str> = report["uncatalogued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    uncatalogued.sort();
    let mut expected: Vec<String> = first.iter().map(|m| sha256_hex(m)).collect();
    expected.sort();
    assert_eq!(uncatalogued, expected);
    let packs = fs::read_dir(sandbox.archive().join("packs"))
        .unwrap()
        .count();
    assert!(packs > 2, "{packs} packs");
    assert_eq!(report["packs"], packs);
    assert!(report["problems"].as_array().unwrap().iter().all(|p| {
        let p = p.as_str().unwrap();
        p.contains("00000001.jsonl.zst") && !p.contains(".pack")
    }));
}

#[test]
fn an_archive_from_a_newer_popvault_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.ok(&["init"]);
    let header = sandbox.archive().join("popvault-archive.json");
    let text = fs::read_to_string(&header)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    fs::write(&header, text).unwrap();
    let out = sandbox.run(&["list"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("format version 99") && stderr.contains("upgrade popvault"),
        "{stderr}"
    );
}

#[test]
fn bad_paths_get_one_clear_line_and_no_panic() {
    let sandbox = Sandbox::new();
    for (args, needle) in [
        (vec!["list"], "no archive at"),
        (
            vec!["import", "maildir:/nonexistent/dir"],
            "/nonexistent/dir",
        ),
        (
            vec!["import", "mbox:/nonexistent.mbox"],
            "/nonexistent.mbox",
        ),
        (vec!["import", "pop:/x"], "is not an import source"),
        (
            vec!["import", "eml:/nonexistent.eml"],
            "hint: check the path",
        ),
    ] {
        let out = sandbox.run(&args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
    }
    fs::create_dir(sandbox.path().join("notes")).unwrap();
    fs::write(sandbox.path().join("notes/todo.txt"), "x").unwrap();
    let out = sandbox.run(&[
        "--archive",
        sandbox.path().join("notes").to_str().unwrap(),
        "init",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a popvault archive"));
    let out = sandbox.run(&[
        "--archive",
        sandbox.path().join("notes/todo.txt").to_str().unwrap(),
        "list",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file, not an archive"));
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
    let sandbox = Sandbox::new();
    sandbox.ok(&["init"]);
    // `init` on an archive is no failure (its help promises only to refuse a non-archive).
    assert!(sandbox.ok(&["init"]).contains("an archive already"));
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(sandbox.archive().join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = sandbox.run(&[
        "import",
        &format!(
            "eml:{}",
            crate::support::corpus_dir()
                .join("cpython-msg_03.eml")
                .display()
        ),
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another popvault is writing"));
    // Readers never block.
    sandbox.ok(&["list"]);
    drop(lock);
}

#[test]
fn the_sample_config_parses() {
    let text = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/config.toml"),
    )
    .unwrap();
    let config = popvault::config::Config::parse(&text).unwrap();
    assert_eq!(config.accounts.len(), 2);
    for account in &config.accounts {
        popvault::account::Account::resolve(account, &Default::default()).unwrap();
    }
}
