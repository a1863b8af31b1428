//! `popvault backup` against Dovecot configured as providers configure it: UIDL formats that
//! get reused, CRAM-MD5-only and APOP logins, TLS required for plain passwords, one session
//! per mailbox.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message, sha256_hex};

fn deliver(dovecot: &Dovecot, messages: &[Vec<u8>], prefix: &str) {
    for (n, m) in messages.iter().enumerate() {
        dovecot.add_message(&format!("{prefix}{n:04}.eml"), m);
    }
}

fn generated(count: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    (0..count).map(|n| generated_message(n, &mut rng)).collect()
}

fn backup(sandbox: &Sandbox, dovecot: &Dovecot, extra: &[&str]) -> Output {
    let url = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    sandbox
        .command()
        .args(["backup", &url, "--ca-file", ca.to_str().unwrap(), "--json"])
        .args(extra)
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap()
}

fn account_report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    r["accounts"][0].clone()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data-loss case: Dovecot with `pop3_uidl_format = %u` gives UIDs from 1 again after an
/// index rebuild or a migration. Thirty other messages under the thirty archived UIDLs must be
/// archived, never deleted as if they were the old ones.
#[test]
fn reused_uidls_never_delete_mail_that_was_not_archived() {
    let dovecot = Dovecot::start_with(&[("pop3_uidl_format", "%u")]);
    let sandbox = Sandbox::new();
    deliver(&dovecot, &generated(30, 1), "a");
    let out = backup(&sandbox, &dovecot, &[]);
    assert_eq!(account_report(&out)["new_messages"], 30);

    dovecot.reset_mailbox();
    let replacements = generated(30, 2);
    deliver(&dovecot, &replacements, "b");

    let out = backup(
        &sandbox,
        &dovecot,
        &["--delete-after-days", "0", "--dry-run"],
    );
    let r = account_report(&out);
    assert_eq!(r["would_fetch"].as_array().unwrap().len(), 30, "{r}");
    assert_eq!(r["would_delete"].as_array().unwrap().len(), 0, "{r}");
    assert!(r["warnings"].to_string().contains("reused 30 UIDLs"), "{r}");

    let out = backup(&sandbox, &dovecot, &["--delete-after-days", "0"]);
    let r = account_report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(
        (r["new_messages"].as_u64(), r["deleted"].as_u64()),
        (Some(30), Some(0)),
        "{r}"
    );
    assert_eq!(r["reused_uidls"], 30, "{r}");
    assert_eq!(dovecot.messages_held(), 30, "nothing deleted");
    for m in &replacements {
        assert_eq!(
            &sandbox.cat(&sha256_hex(m)),
            m,
            "every replacement is archived"
        );
    }

    // Now archived and proven, they go on the next run.
    let out = backup(&sandbox, &dovecot, &["--delete-after-days", "0"]);
    let r = account_report(&out);
    assert_eq!(
        (r["new_messages"].as_u64(), r["deleted"].as_u64()),
        (Some(0), Some(30)),
        "{r}"
    );
    assert_eq!(dovecot.messages_held(), 0);
    assert!(sandbox.run(&["verify", "--full"]).status.success());
}

/// A message of the same size as the archived one under its UIDL is proven by its header
/// block (`TOP n 0`) before it is deleted; other headers mean another message.
#[test]
fn a_reused_uidl_with_the_same_size_is_caught_by_its_header_block() {
    let dovecot = Dovecot::start_with(&[("pop3_uidl_format", "%u")]);
    let sandbox = Sandbox::new();
    let message = |n: usize, word: &str| {
        format!("Subject: {word} {n:03}\r\nMessage-ID: <{word}{n:03}@example>\r\n\r\nsame body {n:03}\r\n")
            .into_bytes()
    };
    let originals: Vec<Vec<u8>> = (0..10).map(|n| message(n, "original")).collect();
    let replaced: Vec<Vec<u8>> = (0..10).map(|n| message(n, "replaced")).collect();
    assert_eq!(originals[3].len(), replaced[3].len());
    deliver(&dovecot, &originals, "a");
    assert_eq!(
        account_report(&backup(&sandbox, &dovecot, &[]))["new_messages"],
        10
    );

    dovecot.reset_mailbox();
    // Three messages are the same as before, seven are others of the same size.
    let mut now: Vec<Vec<u8>> = originals[..3].to_vec();
    now.extend_from_slice(&replaced[3..]);
    deliver(&dovecot, &now, "b");
    let out = backup(&sandbox, &dovecot, &["--delete-after-days", "0"]);
    let r = account_report(&out);
    assert_eq!(r["reused_uidls"], 7, "{r}");
    assert_eq!(r["new_messages"], 7, "{r}");
    assert_eq!(r["deleted"], 3, "only the proven ones: {r}");
    for m in &replaced[3..] {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
    assert_eq!(dovecot.messages_held(), 7);
}

/// Identical copies of one message are ordinary (a mail sent twice): a count, not an alarm.
/// The same bytes under new UIDLs while the old UIDLs are gone is a reset: that is warned.
#[test]
fn a_uidl_reset_is_warned_about_and_plain_duplicates_are_only_counted() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let messages = generated(5, 3);
    deliver(&dovecot, &messages, "a");
    deliver(
        &dovecot,
        &[messages[0].clone(), messages[0].clone()],
        "copy",
    );
    let out = backup(&sandbox, &dovecot, &[]);
    let r = account_report(&out);
    assert_eq!(
        (r["new_messages"].as_u64(), r["already_archived"].as_u64()),
        (Some(5), Some(2)),
        "{r}"
    );
    assert!(!r["warnings"].to_string().contains("reset"), "{r}");

    // A new UIDVALIDITY (Dovecot takes the time in seconds): every UIDL changes, the
    // messages stay.
    std::thread::sleep(Duration::from_millis(1100));
    dovecot.reset_mailbox();
    deliver(&dovecot, &messages, "b");
    let out = backup(&sandbox, &dovecot, &[]);
    let r = account_report(&out);
    assert_eq!(
        (r["new_messages"].as_u64(), r["already_archived"].as_u64()),
        (Some(0), Some(5)),
        "{r}"
    );
    assert!(
        r["warnings"]
            .to_string()
            .contains("did the server reset its UIDLs"),
        "{r}"
    );
}

/// `auth_mechanisms = cram-md5`: Dovecot keeps listing USER, which it then refuses. `auto`
/// logs in with CRAM-MD5, over TLS and, when the user allowed a plain connection, without.
#[test]
fn a_cram_md5_only_server_is_logged_into_with_cram_md5() {
    let dovecot = Dovecot::start_with(&[("auth_mechanisms", "cram-md5")]);
    let sandbox = Sandbox::new();
    deliver(&dovecot, &generated(3, 4), "a");
    let out = backup(&sandbox, &dovecot, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(account_report(&out)["new_messages"], 3);
    let plain = format!("pop3://{}@127.0.0.1:{}", dovecot.user(), dovecot.pop3_port);
    for auth in ["auto", "cram-md5"] {
        let out = sandbox.run_with_password(
            &["backup", &plain, "--tls", "none", "--auth", auth],
            dovecot.password(),
        );
        assert!(
            out.status.success(),
            "{auth}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        dovecot.logs().contains("method=CRAM-MD5"),
        "{}",
        dovecot.logs()
    );
    // A wrong password is refused once, clearly, without trying every other method.
    let out = sandbox.run_with_password(
        &["backup", &plain, "--tls", "none", "--json"],
        "Not-The-Passw0rd",
    );
    let r = account_report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("wrong user name or password?"),
        "{r}"
    );
    assert_eq!(r["retries"], 0, "a wrong password is not tried again: {r}");
    assert!(!r.to_string().contains("Not-The-Passw0rd"), "{r}");
}

/// `auth_mechanisms = cram-md5 apop` failed over STLS and POP3S before: USER was tried first.
#[test]
fn cram_md5_and_apop_work_over_every_kind_of_connection() {
    let dovecot = Dovecot::start_with(&[("auth_mechanisms", "cram-md5 apop")]);
    let sandbox = Sandbox::new();
    deliver(&dovecot, &generated(2, 5), "a");
    let ca = dovecot.ca_pem();
    let stls = format!("pop3://{}@127.0.0.1:{}", dovecot.user(), dovecot.pop3_port);
    let pop3s = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    for (url, tls) in [(&stls, "starttls"), (&pop3s, "implicit"), (&stls, "none")] {
        let out = sandbox.run_with_password(
            &[
                "backup",
                url,
                "--tls",
                tls,
                "--ca-file",
                ca.to_str().unwrap(),
            ],
            dovecot.password(),
        );
        assert!(
            out.status.success(),
            "{tls}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sandbox.run_with_password(
        &["backup", &stls, "--tls", "none", "--auth", "apop"],
        dovecot.password(),
    );
    assert_ok(&out);
    assert!(dovecot.logs().contains("method=APOP"), "{}", dovecot.logs());
}

/// `disable_plaintext_auth = yes`, as a remote client meets it: a password in clear is
/// refused with a hint to use TLS; what does not send it (APOP) still works.
#[test]
fn a_server_requiring_tls_for_passwords_gets_a_clear_hint() {
    let dovecot = Dovecot::start_with(&[("disable_plaintext_auth", "yes")]);
    let sandbox = Sandbox::new();
    let plain = format!(
        "pop3://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.remote_pop3_port()
    );
    let out = sandbox.run_with_password(
        &["backup", &plain, "--tls", "none", "--auth", "user"],
        dovecot.password(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tls starttls"), "{stderr}");
    let out = sandbox.run_with_password(&["backup", &plain, "--tls", "none"], dovecot.password());
    assert_ok(&out);
}

/// `pop3_lock_session = yes`: while another client holds the mailbox, Dovecot makes a login
/// wait until it logs out. A login that outlasts the timeout is said to be that (not a dead
/// server) and is tried again.
#[test]
fn a_login_held_up_by_another_session_is_explained_and_retried() {
    let dovecot = Dovecot::start_with(&[("pop3_lock_session", "yes")]);
    let sandbox = Sandbox::new();
    deliver(&dovecot, &generated(3, 6), "a");
    // Another client logs in and holds the session for a few seconds.
    let mut other = TcpStream::connect(("127.0.0.1", dovecot.pop3_port)).unwrap();
    let mut replies = BufReader::new(other.try_clone().unwrap());
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    let mut say = move |command: &str| {
        other
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{command}: {line}");
    };
    say(&format!("USER {}", dovecot.user()));
    say(&format!("PASS {}", dovecot.password()));
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        say("QUIT");
    });
    let out = backup(&sandbox, &dovecot, &["--timeout", "2"]);
    holder.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("did not answer the login in 2 s"),
        "{stderr}"
    );
    assert!(stderr.contains("another client is connected"), "{stderr}");
    let r = account_report(&out);
    assert!(r["retries"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["new_messages"], 3);
}

/// Without --delete-after-days a reused UIDL of the same size is still found: one LIST size
/// that differs shows the server reuses UIDLs, and then every known message is checked by its
/// header block.
#[test]
fn one_reused_uidl_of_another_size_gets_every_known_message_checked() {
    let dovecot = Dovecot::start_with(&[("pop3_uidl_format", "%u")]);
    let sandbox = Sandbox::new();
    let message = |n: usize, word: &str| {
        format!("Subject: {word} {n:03}\r\nMessage-ID: <{word}{n:03}@example>\r\n\r\nsame body {n:03}\r\n")
            .into_bytes()
    };
    let originals: Vec<Vec<u8>> = (0..4).map(|n| message(n, "original")).collect();
    deliver(&dovecot, &originals, "a");
    assert_eq!(
        account_report(&backup(&sandbox, &dovecot, &[]))["new_messages"],
        4
    );
    dovecot.reset_mailbox();
    let mut replaced: Vec<Vec<u8>> = (0..4).map(|n| message(n, "replaced")).collect();
    replaced[0].extend_from_slice(b"a longer body\r\n");
    deliver(&dovecot, &replaced, "b");
    let r = account_report(&backup(&sandbox, &dovecot, &[]));
    assert_eq!(r["new_messages"], 4, "{r}");
    assert_eq!(r["reused_uidls"], 4, "{r}");
    for m in &replaced {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}
