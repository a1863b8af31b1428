//! `popvault repair`: after damage, every readable message stays byte-identical, `verify --full`
//! passes again, and what is lost is named and healed by seeing the message again.

use std::fs;

use crate::archive_damage::{
    assert_all_cat, pack_of, stored_offset, truncate_pack_into, two_pack_archive,
};
use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message, sha256_hex};

fn repair(sandbox: &Sandbox, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["repair", "--json"];
    args.extend_from_slice(extra);
    let out = sandbox.run(&args);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verifies(sandbox: &Sandbox) -> String {
    let out = sandbox.run(&["verify", "--full"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "verify after repair: {stderr}");
    stderr
}

#[test]
fn a_flipped_byte_is_salvaged_around_and_the_lost_message_heals_on_reimport() {
    let (sandbox, first, second) = two_pack_archive();
    let victim = sha256_hex(&first[7]);
    let pack = pack_of(&sandbox, 1);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[stored_offset(&sandbox, &victim) as usize + 56 + 9] ^= 0x10;
    fs::write(&pack, &bytes).unwrap();
    let before = fs::read_dir(sandbox.archive().join("commits"))
        .unwrap()
        .count();

    let dry = repair(&sandbox, &["--dry-run"]);
    assert_eq!(dry["lost"].as_array().unwrap().len(), 1);
    assert_eq!(
        fs::read_dir(sandbox.archive().join("commits"))
            .unwrap()
            .count(),
        before,
        "--dry-run wrote a commit"
    );
    assert_eq!(
        fs::read(&pack).unwrap(),
        bytes,
        "--dry-run touched the pack"
    );

    let r = repair(&sandbox, &[]);
    assert_eq!(r["lost"][0]["id"], victim);
    assert_eq!(r["salvaged_messages"], 59);
    assert!(r["lost"][0]["sources"][0]["kind"] == "maildir");
    let stderr = verifies(&sandbox);
    assert!(
        stderr.contains(&format!("lost message {victim}")),
        "{stderr}"
    );
    let intact: Vec<Vec<u8>> = first
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, m)| m.clone())
        .collect();
    assert_all_cat(&sandbox, &intact);
    assert_all_cat(&sandbox, &second);
    assert!(
        sandbox
            .archive()
            .join("quarantine")
            .read_dir()
            .unwrap()
            .count()
            >= 1,
        "the damaged pack is kept aside"
    );

    // Seeing the message again (re-importing its Maildir) stores it again: healed.
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("one").display()),
    ]);
    let stderr = verifies(&sandbox);
    assert!(!stderr.contains("lost message"), "{stderr}");
    assert_eq!(sandbox.cat(&victim), first[7]);
    let again = repair(&sandbox, &[]);
    assert_eq!(again["lost"].as_array().unwrap().len(), 0);
    assert!(
        again["retired_packs"].as_array().unwrap().is_empty(),
        "{again}"
    );
}

#[test]
fn a_truncated_pack_keeps_its_head_and_a_torn_segment_is_rebuilt_from_the_packs() {
    let (sandbox, first, second) = two_pack_archive();
    truncate_pack_into(&sandbox, 1, &first[40], 30);
    let segment = sandbox.archive().join("catalog/00000002.jsonl.zst");
    let seg = fs::read(&segment).unwrap();
    fs::write(&segment, &seg[..seg.len() - 20]).unwrap();

    let r = repair(&sandbox, &[]);
    assert_eq!(r["lost"].as_array().unwrap().len(), 20, "{r}");
    assert_eq!(r["recatalogued"], 60, "{r}");
    verifies(&sandbox);
    assert_all_cat(&sandbox, &first[..40]);
    assert_all_cat(&sandbox, &second);
    let listed = sandbox.list();
    assert_eq!(listed.len(), 100);
    assert!(
        listed
            .iter()
            .any(|m| m["sources"][0]["kind"] == "recovered" && m["subject"] == "message 59")
    );
}

#[test]
fn an_unreadable_commit_record_is_set_aside_and_its_messages_recovered() {
    let (sandbox, first, second) = two_pack_archive();
    fs::write(
        sandbox.archive().join("commits/00000002.json"),
        b"{ this is not json",
    )
    .unwrap();
    assert_eq!(sandbox.run(&["verify"]).status.code(), Some(3));
    let r = repair(&sandbox, &[]);
    assert_eq!(r["retired_commits"], serde_json::json!([2]));
    verifies(&sandbox);
    assert_all_cat(&sandbox, &first);
    assert_all_cat(&sandbox, &second);
    // And a writer can go on: a new import commits after the set-aside number.
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("two").display()),
    ]);
    verifies(&sandbox);
}

#[test]
fn messages_of_a_deleted_pack_are_fetched_again_from_the_server() {
    let dovecot = Dovecot::start();
    let mut rng = Rng(31);
    let messages: Vec<Vec<u8>> = (0..12).map(|n| generated_message(n, &mut rng)).collect();
    for (n, m) in messages.iter().enumerate() {
        dovecot.add_message(&format!("r{n}"), m);
    }
    let sandbox = Sandbox::new();
    let config = sandbox.path().join(".config/popvault/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        format!(
            "[[account]]\nname = \"home\"\nserver = \"pop3s://{}@127.0.0.1:{}\"\nca_file = \"{}\"\npassword_command = \"echo {}\"\n",
            dovecot.user(),
            dovecot.pop3s_port,
            dovecot.ca_pem().display(),
            dovecot.password()
        ),
    )
    .unwrap();
    sandbox.ok(&["backup", "-q"]);
    fs::remove_file(pack_of(&sandbox, 1)).unwrap();
    let out = sandbox.run(&["repair", "--refetch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("LOST") && stdout.contains("account home UIDL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("home: 12 new messages"),
        "the refetch stored them again: {stdout}"
    );
    verifies(&sandbox);
    for m in &messages {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}

/// Lost commit records are damage, not an interrupted run: no writer deletes the packs and
/// segments they named, verify reports them, and repair catalogues every message again.
#[test]
fn lost_commit_records_lose_no_message_to_a_later_import_or_repair() {
    for lose_all in [false, true] {
        let (sandbox, first, second) = two_pack_archive();
        let before = sandbox.list();
        let commits = sandbox.archive().join("commits");
        if lose_all {
            fs::remove_dir_all(&commits).unwrap();
            fs::create_dir(&commits).unwrap();
        } else {
            fs::remove_file(commits.join("00000002.json")).unwrap();
        }
        let out = sandbox.run(&["verify"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("missing"), "{stderr}");

        // A writer opening the archive must not take those files for an interrupted run's.
        let extra = sandbox.path().join("extra");
        let added = crate::support::write_maildir(&extra, 3, 9);
        sandbox.ok(&["import", &format!("maildir:{}", extra.display())]);

        let report = repair(&sandbox, &[]);
        assert_eq!(report["lost"].as_array().map(Vec::len), Some(0), "{report}");
        verifies(&sandbox);
        assert_all_cat(&sandbox, &first);
        assert_all_cat(&sandbox, &second);
        assert_all_cat(&sandbox, &added);
        let after = sandbox.list();
        for m in &before {
            let same = after
                .iter()
                .find(|a| a["id"] == m["id"])
                .expect("every message is still listed");
            assert!(m["sources"].as_array().is_some_and(|s| !s.is_empty()));
            assert_eq!(same["sources"], m["sources"], "its origin is kept");
        }
    }
}

/// `stats` and `status` count each message once after a repair (which records the salvaged
/// messages' lines again), and once more when a later run stores a lost one again.
#[test]
fn stats_and_status_count_each_message_once_after_a_repair() {
    let sandbox = Sandbox::new();
    let dovecot = Dovecot::start();
    let mut rng = Rng(61);
    for n in 0..30 {
        dovecot.add_message(&format!("m{n}"), &generated_message(n, &mut rng));
    }
    let url = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    let backup = || {
        let out = sandbox.run_with_password(
            &["backup", &url, "--ca-file", ca.to_str().unwrap(), "-q"],
            dovecot.password(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    backup();
    let pack = pack_of(&sandbox, 1);
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&pack, &bytes).unwrap();
    repair(&sandbox, &[]);
    verifies(&sandbox);
    let count = |sandbox: &Sandbox| {
        let stats: serde_json::Value =
            serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
        let status: serde_json::Value =
            serde_json::from_str(&sandbox.ok(&["status", "--json"])).unwrap();
        (
            stats["messages"].as_u64().unwrap(),
            stats["unique_messages"].as_u64().unwrap(),
            status[0]["messages_archived"].as_u64().unwrap(),
        )
    };
    assert_eq!(count(&sandbox), (29, 29, 29), "one message was lost");
    backup();
    assert_eq!(
        count(&sandbox),
        (30, 30, 30),
        "the next backup fetched it again"
    );
}

/// A mistyped archive path in a monitoring job must alert, not pass.
#[test]
fn status_max_age_alerts_on_an_archive_that_does_not_exist() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command()
        .arg("--archive")
        .arg(sandbox.path().join("typo"))
        .args(["status", "--max-age", "48h"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no archive at"));
}
