//! `popvault backup` against a real Dovecot on 127.0.0.1 (POP3 with STLS, and POP3S).

use std::collections::BTreeMap;
use std::fs;
use std::process::Output;

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message, sha256_hex};

/// Puts `count` generated messages (CRLF, as Dovecot serves them) into the server's Maildir.
fn deliver(dovecot: &Dovecot, first: u64, count: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    (first..first + count)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            dovecot.add_message(&format!("{n:06}.gen"), &m);
            m
        })
        .collect()
}

/// The bytes of every message file the server holds, by SHA-256.
fn server_files(dovecot: &Dovecot) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["new", "cur"] {
        for e in fs::read_dir(dovecot.maildir().join(sub)).unwrap() {
            let bytes = fs::read(e.unwrap().path()).unwrap();
            out.insert(sha256_hex(&bytes), bytes);
        }
    }
    out
}

fn backup(sandbox: &Sandbox, dovecot: &Dovecot, url: &str, extra: &[&str]) -> Output {
    let ca = dovecot.ca_pem();
    let mut args = vec!["backup", url, "--ca-file", ca.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    sandbox
        .command()
        .args(&args)
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn stls_url(d: &Dovecot) -> String {
    format!("pop3://{}@127.0.0.1:{}", d.user(), d.pop3_port)
}

fn pop3s_url(d: &Dovecot) -> String {
    format!("pop3s://{}@127.0.0.1:{}", d.user(), d.pop3s_port)
}

#[test]
fn full_then_incremental_backup_archives_every_server_byte_exactly_once() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    deliver(&dovecot, 0, 120, 11);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..60_000 {
        big.extend_from_slice(
            format!("..{i} a long line of a large message that crosses many reads\r\n").as_bytes(),
        );
    }
    dovecot.add_message("big.msg", &big);

    let out = backup(&sandbox, &dovecot, &stls_url(&dovecot), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(r["accounts"][0]["new_messages"], 121);
    for (id, bytes) in server_files(&dovecot) {
        assert_eq!(
            sandbox.cat(&id),
            bytes,
            "message {id} differs from the server's file"
        );
    }
    sandbox.ok(&["verify", "--full"]);

    // Incremental: only the 5 new messages are fetched, over implicit TLS this time.
    deliver(&dovecot, 1000, 5, 12);
    let out = backup(&sandbox, &dovecot, &pop3s_url(&dovecot), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(r["accounts"][0]["new_messages"], 5, "{r}");
    assert_eq!(r["accounts"][0]["on_server"], 126);
    let listed = sandbox.list();
    assert_eq!(listed.len(), 126);
    for (id, bytes) in server_files(&dovecot) {
        assert_eq!(sandbox.cat(&id), bytes);
    }

    // Nothing new: success, nothing fetched, and the run is quiet with -q.
    let out = sandbox
        .command()
        .args([
            "backup",
            &stls_url(&dovecot),
            "--ca-file",
            dovecot.ca_pem().to_str().unwrap(),
            "-q",
        ])
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "-q printed {:?}",
        out
    );
    assert_eq!(
        server_files(&dovecot).len(),
        126,
        "keep on server is the default"
    );
}

#[test]
fn delete_after_days_deletes_exactly_the_old_verified_messages() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let old = deliver(&dovecot, 0, 6, 21);
    let out = backup(
        &sandbox,
        &dovecot,
        &stls_url(&dovecot),
        &["--now", "2026-01-01T00:00:00Z"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Damage the archived copy of one old message: it must stay on the server.
    let damaged = sha256_hex(&old[2]);
    let pack = fs::read_dir(sandbox.archive().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&pack).unwrap();
    let listed = sandbox.list();
    assert_eq!(listed.len(), 6);
    let at = find_record(&bytes, &damaged) + 56 + 5;
    bytes[at] ^= 1;
    fs::write(&pack, bytes).unwrap();

    let new = deliver(&dovecot, 100, 3, 22);
    let dry = backup(
        &sandbox,
        &dovecot,
        &stls_url(&dovecot),
        &[
            "--now",
            "2026-01-10T00:00:00Z",
            "--delete-after-days",
            "5",
            "--dry-run",
        ],
    );
    let r = report(&dry);
    assert_eq!(r["accounts"][0]["would_fetch"].as_array().unwrap().len(), 3);
    assert_eq!(
        r["accounts"][0]["would_delete"].as_array().unwrap().len(),
        5
    );
    assert_eq!(
        server_files(&dovecot).len(),
        9,
        "--dry-run changed the server"
    );

    let out = backup(
        &sandbox,
        &dovecot,
        &stls_url(&dovecot),
        &["--now", "2026-01-10T00:00:00Z", "--delete-after-days", "5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report(&out)["accounts"][0]["deleted"], 5);
    // With nothing new and nothing due, the dry run's lists are there, empty (doc/JSON.md).
    let idle = backup(
        &sandbox,
        &dovecot,
        &stls_url(&dovecot),
        &["--now", "2026-01-10T00:00:00Z", "--dry-run"],
    );
    let r = &report(&idle)["accounts"][0];
    assert_eq!(r["would_fetch"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["would_delete"].as_array().map(Vec::len), Some(0), "{r}");
    let left: Vec<String> = server_files(&dovecot).into_keys().collect();
    let mut expected: Vec<String> = new.iter().chain([&old[2]]).map(|m| sha256_hex(m)).collect();
    expected.sort();
    assert_eq!(
        left, expected,
        "exactly the 3 new messages and the damaged one remain"
    );
}

/// The offset of the pack record whose id is `id`.
fn find_record(pack: &[u8], id: &str) -> usize {
    let id = hex::decode(id).unwrap();
    pack.windows(32)
        .position(|w| w == id.as_slice())
        .expect("record in pack")
        - 24
}

#[test]
fn wrong_password_wrong_ca_and_pin_mismatch_fail_clearly_without_the_secret() {
    let dovecot = Dovecot::start();
    deliver(&dovecot, 0, 2, 31);
    let sandbox = Sandbox::new();
    let url = stls_url(&dovecot);
    let ca = dovecot.ca_pem();

    let out = sandbox
        .command()
        .args(["backup", &url, "--ca-file", ca.to_str().unwrap()])
        .env("POPVAULT_PASSWORD", "Wr0ngPassw0rd!")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: alice@127.0.0.1") && stderr.contains("rejected"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Wr0ngPassw0rd!")
            && !String::from_utf8_lossy(&out.stdout).contains("Wr0ngPassw0rd!")
    );

    // A CA that did not sign the server's certificate.
    let other_ca = sandbox.path().join("other-ca.pem");
    fs::write(
        &other_ca,
        crate::common::dovecot::TestPki::generate("Other CA").ca_pem,
    )
    .unwrap();
    let out = sandbox
        .command()
        .args(["backup", &url, "--ca-file", other_ca.to_str().unwrap()])
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("the TLS certificate of 127.0.0.1 is not trusted: its issuer"),
        "{stderr}"
    );

    // Pinning: a wrong pin fails, the right one works even without a CA file.
    let out = sandbox
        .command()
        .args([
            "backup",
            &pop3s_url(&dovecot),
            "--tls-fingerprint",
            &"00".repeat(32),
        ])
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("not the pinned 0000"), "{stderr}");
    let pin = sha256_hex(dovecot.leaf_der());
    let out = sandbox
        .command()
        .args(["backup", &pop3s_url(&dovecot), "--tls-fingerprint", &pin])
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sandbox.list().len(), 2);
    assert!(
        !fs::read_dir(sandbox.archive().join("commits"))
            .unwrap()
            .any(|e| {
                fs::read_to_string(e.unwrap().path())
                    .unwrap()
                    .contains(dovecot.password())
            })
    );
}

#[test]
fn accounts_come_from_the_config_file_with_a_password_command() {
    let dovecot = Dovecot::start();
    deliver(&dovecot, 0, 3, 41);
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "archive = \"{}\"\n[[account]]\nname = \"home\"\nserver = \"{}\"\nca_file = \"{}\"\npassword_command = \"echo {}\"\n\n\
             [[account]]\nname = \"broken\"\nserver = \"pop3://nobody@127.0.0.1:1\"\ntls = \"none\"\npassword_command = \"echo x\"\n",
            sandbox.path().join("cfg-archive").display(),
            stls_url(&dovecot),
            dovecot.ca_pem().display(),
            dovecot.password()
        ),
    )
    .unwrap();
    let out = sandbox
        .command()
        .env_remove("POPVAULT_ARCHIVE")
        .args(["--config", config.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "one account failed, one worked: {stdout}{stderr}"
    );
    assert!(stdout.contains("home: 3 new messages"), "{stdout}");
    assert!(stderr.contains("error: broken: cannot connect"), "{stderr}");
    let out = sandbox
        .command()
        .env_remove("POPVAULT_ARCHIVE")
        .args([
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--account",
            "home",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("home: 0 new messages"));
}

#[test]
fn kill_9_mid_backup_then_rerun_holds_every_message_exactly_once() {
    let dovecot = Dovecot::start();
    let messages = deliver(&dovecot, 0, 3000, 51);
    let sandbox = Sandbox::new();
    let ca = dovecot.ca_pem();
    let mut rng = Rng(0xfeed_beef_1234_5678);
    let mut interrupted = 0;
    for _ in 0..5 {
        let mut command = sandbox.command();
        command
            .args([
                "backup",
                &stls_url(&dovecot),
                "--ca-file",
                ca.to_str().unwrap(),
                "-q",
            ])
            .env("POPVAULT_PASSWORD", dovecot.password());
        interrupted += usize::from(crate::support::kill_9_after(
            &mut command,
            10 + rng.next() % 150,
        ));
        if sandbox.archive().join("popvault-archive.json").exists() {
            let out = sandbox.run(&["verify", "--full"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        interrupted > 0,
        "no run was interrupted: the test proved nothing"
    );
    let out = backup(&sandbox, &dovecot, &stls_url(&dovecot), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sandbox.ok(&["verify", "--full"]);
    let stats: serde_json::Value = serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
    assert_eq!(
        stats["messages"], 3000,
        "each message recorded exactly once"
    );
    assert_eq!(stats["unique_messages"], 3000);
    for m in messages.iter().step_by(97) {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}
