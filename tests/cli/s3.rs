//! `s3://` archives against a real S3 API (moto on 127.0.0.1), with versioning on so that any
//! overwrite would show: backup, import, restore, verify and copy; kill -9 and a re-run;
//! faults of the store; secrets kept out of everything.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::dovecot::Dovecot;
use crate::common::moto::{ACCESS_KEY_ID, Fault, FaultProxy, Moto, SECRET_ACCESS_KEY};
use crate::support::{Rng, Sandbox, generated_message, sha256_hex, write_maildir};

const BUCKET: &str = "pv-test";
const ARCHIVE: &str = "s3://pv-test/mail/home";

/// popvault with the archive on `endpoint` (moto, or the fault proxy in front of it), its
/// mirror in `cache` (one per "machine").
fn s3_command(sandbox: &Sandbox, moto: &Moto, endpoint: &str, cache: &Path) -> Command {
    let mut c = sandbox.command();
    moto.env(&mut c, endpoint);
    c.env("POPVAULT_ARCHIVE", ARCHIVE)
        .env("XDG_CACHE_HOME", cache)
        .env("POPVAULT_REPORT_REQUESTS", "1");
    c
}

fn run(command: &mut Command, args: &[&str]) -> Output {
    let out = command.args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(SECRET_ACCESS_KEY),
        "the secret key was printed: {text}"
    );
    assert!(
        !text.contains("X-Amz-Signature"),
        "a signed URL was printed: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    out
}

fn ok(command: &mut Command, args: &[&str]) -> String {
    let out = run(command, args);
    assert!(
        out.status.success(),
        "popvault {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The request count popvault reports for the archive.
fn requests(out: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{ARCHIVE}: "))?
                .strip_suffix(" requests")
        })
        .unwrap_or_else(|| panic!("no request count in: {stderr}"))
        .parse()
        .unwrap()
}

/// Nothing was ever overwritten: no key has two versions (lock objects come and go, each once).
fn assert_nothing_overwritten(moto: &Moto) {
    for (key, versions) in moto.versions(BUCKET) {
        let expected = if key.contains("/locks/") { 2 } else { 1 };
        assert!(versions <= expected, "{key} has {versions} versions");
    }
    // And no secret in any object.
    for key in moto.objects(BUCKET) {
        if let Some(body) = moto.get(BUCKET, &key) {
            assert!(
                !body
                    .windows(SECRET_ACCESS_KEY.len())
                    .any(|w| w == SECRET_ACCESS_KEY.as_bytes()),
                "{key} holds the secret key"
            );
        }
    }
}

fn archive_keys(moto: &Moto) -> Vec<String> {
    moto.objects(BUCKET)
        .into_iter()
        .filter(|k| !k.contains("/locks/"))
        .collect()
}

#[test]
fn a_create_only_write_never_replaces_an_object() {
    use popvault::archive::remote::{ObjectStore, S3Config, S3Store, UrlStyle};
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let store = S3Store::new(S3Config {
        bucket: BUCKET.into(),
        prefix: "p".into(),
        endpoint: moto.endpoint().parse().unwrap(),
        region: "us-east-1".into(),
        style: UrlStyle::Path,
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: SECRET_ACCESS_KEY.into(),
        session_token: None,
        roots: None,
        timeout: std::time::Duration::from_secs(30),
        attempts: 1,
        part_size: 5 << 20,
    })
    .unwrap()
    .with_stale_after(std::time::Duration::ZERO);
    // Uploads a killed writer left open: this archive's are swept before its first multipart
    // upload, another archive's (another prefix) are not touched.
    moto.open_upload(BUCKET, "p/packs/dead.pack");
    moto.open_upload(BUCKET, "other/packs/live.pack");
    assert!(
        store.create("k", b"one").unwrap(),
        "the first write creates"
    );
    assert!(
        !store.create("k", b"two").unwrap(),
        "the second finds the key taken (412)"
    );
    assert_eq!(store.get("k").unwrap().unwrap(), b"one");
    assert_eq!(moto.versions(BUCKET), vec![("p/k".to_string(), 1)]);
    assert_eq!(store.get("missing").unwrap(), None);
    let listed = store.list("", None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].key.as_str(), listed[0].size), ("k", 3));
    // Over twice the part size: a multipart upload, create-only too.
    let large: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert!(store.create("large", &large).unwrap());
    let mut other = large.clone();
    other[0] ^= 1;
    assert!(!store.create("large", &other).unwrap(), "a taken key stays");
    assert_eq!(store.get("large").unwrap().unwrap(), large);
    let etag = store.list("large", None).unwrap()[0].etag.clone().unwrap();
    assert!(etag.ends_with("-3"), "three parts: {etag}");
    assert_eq!(moto.open_uploads(BUCKET), vec!["other/packs/live.pack"]);
    assert!(moto.versions(BUCKET).iter().all(|(_, n)| *n == 1));
}

#[test]
fn backup_to_s3_then_restore_on_a_fresh_machine_holds_every_server_byte() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let dovecot = Dovecot::start();
    let mut rng = Rng(77);
    let messages: Vec<Vec<u8>> = (0..300)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            dovecot.add_message(&format!("{n:06}.gen"), &m);
            m
        })
        .collect();
    let sandbox = Sandbox::new();
    let laptop = sandbox.path().join("laptop-cache");
    let url = format!("pop3://{}@127.0.0.1:{}", dovecot.user(), dovecot.pop3_port);
    let ca = dovecot.ca_pem();
    let backup = |extra: &[&str]| {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &laptop);
        c.env("POPVAULT_PASSWORD", dovecot.password());
        let mut args = vec!["backup", url.as_str(), "--ca-file", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&mut c, &args)
    };
    let out = backup(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 new messages"));

    // A nothing-new night costs a handful of requests, whatever the archive holds.
    let keys_before = archive_keys(&moto);
    let out = backup(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nothing_new = requests(&out);
    assert!(
        nothing_new < 10,
        "a nothing-new backup made {nothing_new} requests"
    );
    // It records the run (a commit of account lines only): a segment and a record.
    assert_eq!(archive_keys(&moto).len(), keys_before.len() + 2);

    // Another machine, another cache: everything comes from the bucket.
    let fresh = sandbox.path().join("new-laptop-cache");
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &fresh);
    let verified = ok(&mut c, &["verify", "--full"]);
    assert!(
        verified.contains("300 messages") && verified.contains("OK"),
        "{verified}"
    );
    let maildir = sandbox.path().join("restored");
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &fresh);
    ok(
        &mut c,
        &["restore", "--to", &format!("maildir:{}", maildir.display())],
    );
    let mut restored: Vec<String> = Vec::new();
    for sub in ["cur", "new"] {
        for e in std::fs::read_dir(maildir.join(sub)).unwrap() {
            restored.push(sha256_hex(&std::fs::read(e.unwrap().path()).unwrap()));
        }
    }
    restored.sort();
    let mut expected: Vec<String> = messages.iter().map(|m| sha256_hex(m)).collect();
    expected.sort();
    assert_eq!(restored, expected, "every server byte came back from S3");
    assert_nothing_overwritten(&moto);
}

#[test]
fn copy_local_to_s3_and_back_is_complete_and_a_rerun_makes_nothing() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    let messages = write_maildir(&maildir, 200, 5);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);
    let cache = sandbox.path().join("cache");

    // status says how far behind the off-site copy is (not there yet: all of it).
    let behind = |sandbox: &Sandbox| {
        let mut c = s3_command(sandbox, &moto, &moto.endpoint(), &cache);
        c.env("POPVAULT_ARCHIVE", sandbox.archive());
        let status: serde_json::Value =
            serde_json::from_str(&ok(&mut c, &["status", "--copy", ARCHIVE, "--json"])).unwrap();
        status["copies"][0]["lines_behind"].as_u64().unwrap()
    };
    assert_eq!(behind(&sandbox), 200);

    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    c.env("POPVAULT_ARCHIVE", sandbox.archive());
    let said = ok(&mut c, &["copy", "--to", ARCHIVE]);
    assert!(said.contains("200 messages new"), "{said}");
    assert_eq!(behind(&sandbox), 0);
    let keys = archive_keys(&moto);

    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    c.env("POPVAULT_ARCHIVE", sandbox.archive());
    let out = run(&mut c, &["copy", "--to", ARCHIVE]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("0 messages new") && said.contains("200 already there"),
        "{said}"
    );
    assert_eq!(archive_keys(&moto), keys, "a re-run made new objects");

    // From S3 into a new directory on another machine: the same messages and catalog lines.
    let back = sandbox.path().join("back");
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache2"),
    );
    ok(&mut c, &["copy", "--to", back.to_str().unwrap()]);
    ok(
        sandbox.command().env("POPVAULT_ARCHIVE", &back),
        &["verify", "--full"],
    );
    let listed = ok(
        sandbox.command().env("POPVAULT_ARCHIVE", &back),
        &["list", "--json"],
    );
    let mut ids: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let mut expected: Vec<String> = messages.iter().map(|m| sha256_hex(m)).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert_nothing_overwritten(&moto);
}

#[test]
fn kill_9_mid_import_and_mid_copy_to_s3_then_rerun_holds_each_message_once() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    write_maildir(&maildir, 4000, 9);
    let cache = sandbox.path().join("cache");
    let mut rng = Rng(0x5eed_0001);
    let mut interrupted = 0;
    for _ in 0..4 {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        c.args(["import", &format!("maildir:{}", maildir.display())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        interrupted += usize::from(crate::support::kill_9_after(
            &mut c,
            300 + rng.next() % 1500,
        ));
    }
    assert!(
        interrupted > 0,
        "no run was interrupted: the test proved nothing"
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    ok(
        &mut c,
        &["import", &format!("maildir:{}", maildir.display())],
    );

    // Every message once, as another machine sees it.
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["messages"], 4000, "{stats}");
    assert_eq!(stats["unique_messages"], 4000, "{stats}");
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    ok(&mut c, &["verify", "--full"]);

    // The same for a copy out of S3 into a local directory, killed midway.
    let dest = sandbox.path().join("copy");
    let mut interrupted = 0;
    for _ in 0..3 {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        c.args(["copy", "--to", dest.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        interrupted += usize::from(crate::support::kill_9_after(&mut c, 200 + rng.next() % 800));
    }
    assert!(
        interrupted > 0,
        "no copy was interrupted: the test proved nothing"
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    ok(&mut c, &["copy", "--to", dest.to_str().unwrap()]);
    let stats = ok(
        sandbox.command().env("POPVAULT_ARCHIVE", &dest),
        &["stats", "--json"],
    );
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["messages"], 4000, "{stats}");
    assert_eq!(stats["unique_messages"], 4000, "{stats}");
    assert_nothing_overwritten(&moto);
}

#[test]
fn store_faults_are_retried_or_reported_in_one_line_and_nothing_is_lost() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    let messages = write_maildir(&maildir, 50, 3);
    let cache = sandbox.path().join("cache");
    let import = || {
        let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
        run(
            &mut c,
            &["import", &format!("maildir:{}", maildir.display())],
        )
    };

    // 500s on a commit record and a connection reset in the middle of a pack's upload:
    // retried, and it works.
    proxy.fail("PUT", "/commits/", Fault::Status500, Some(2));
    proxy.fail("PUT", "/packs/", Fault::ResetMidUpload, Some(1));
    let out = import();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The store refusing commit records for good: one line naming it, a failing exit, no
    // commit on the store (its pack and segment are there, named by no record: not part of
    // the archive), the commit kept in the local copy.
    let more = sandbox.path().join("More");
    write_maildir(&more, 20, 99);
    let records = |moto: &Moto| {
        archive_keys(moto)
            .iter()
            .filter(|k| k.contains("/commits/"))
            .count()
    };
    let before = records(&moto);
    proxy.fail("PUT", "/commits/", Fault::Status500, None);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
    let out = run(&mut c, &["import", &format!("maildir:{}", more.display())]);
    proxy.heal();
    assert!(!out.status.success());
    assert_eq!(
        records(&moto),
        before,
        "nothing half-committed on the store"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("500") && stderr.contains("not uploaded"),
        "{stderr}"
    );
    // Another machine sees the archive as it was.
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], messages.len() as u64, "{stats}");
    // The next run uploads what the failed one could not, and adds nothing twice.
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
    ok(&mut c, &["import", &format!("maildir:{}", more.display())]);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(
        stats["unique_messages"],
        messages.len() as u64 + 20,
        "{stats}"
    );
    assert_eq!(stats["messages"], messages.len() as u64 + 20, "{stats}");

    // The endpoint down: one line, no panic.
    drop(proxy);
    let mut c = s3_command(
        &sandbox,
        &moto,
        "http://127.0.0.1:9",
        &sandbox.path().join("c3"),
    );
    let out = run(&mut c, &["list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the object store at http://127.0.0.1:9"),
        "{stderr}"
    );
    assert_nothing_overwritten(&moto);
}

#[test]
fn a_missing_bucket_no_credentials_and_a_held_lock_are_clear_errors() {
    let moto = Moto::start();
    let sandbox = Sandbox::new();
    let cache = sandbox.path().join("cache");
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    let out = run(&mut c, &["list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NoSuchBucket") && stderr.contains("popvault init"),
        "{stderr}"
    );

    let mut c = sandbox.command();
    c.env("POPVAULT_ARCHIVE", ARCHIVE)
        .env("AWS_ENDPOINT_URL", moto.endpoint());
    let out = run(&mut c, &["list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no credentials for s3://pv-test/mail/home"),
        "{stderr}"
    );

    // init creates the bucket; an archive there is not made twice.
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    assert!(ok(&mut c, &["init"]).contains("created an empty archive at s3://pv-test/mail/home"));
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("c2"),
    );
    assert!(ok(&mut c, &["init"]).contains("is an archive already"));

    // Another machine's live lock: a writer refuses, naming it; readers go on.
    let lock = serde_json::json!({
        "host": "other-machine", "pid": 4242, "command": "backup",
        "taken": chrono::Utc::now().to_rfc3339(),
    });
    assert_eq!(
        moto.put(
            BUCKET,
            "mail/home/locks/other-machine-4242-1.json",
            lock.to_string().as_bytes()
        ),
        200
    );
    let maildir = sandbox.path().join("Maildir");
    write_maildir(&maildir, 3, 1);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    let out = run(
        &mut c,
        &["import", &format!("maildir:{}", maildir.display())],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("being written by popvault backup on other-machine (pid 4242)"),
        "{stderr}"
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    ok(&mut c, &["list"]);
    let _ = ACCESS_KEY_ID;
}

#[test]
fn a_hostile_or_damaged_store_is_refused_and_named() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    write_maildir(&maildir, 10, 4);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache"),
    );
    ok(
        &mut c,
        &["import", &format!("maildir:{}", maildir.display())],
    );
    let pack = moto
        .objects(BUCKET)
        .into_iter()
        .find(|k| k.ends_with(".pack"))
        .unwrap();

    // A pack altered on the store: verify --full names it.
    let mut bytes = moto.get(BUCKET, &pack).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    moto.put(BUCKET, &pack, &bytes);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache"),
    );
    let out = run(&mut c, &["verify", "--full"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pack[pack.find("packs/").unwrap()..]));
    // A pack cut short: the quick verify's listing shows it.
    moto.put(BUCKET, &pack, &bytes[..bytes.len() / 2]);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache"),
    );
    let out = run(&mut c, &["verify"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its commit record says"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A new machine leaves the damaged pack out of its copy, says so, and reads the rest;
    // its verify names the damage.
    let more = sandbox.path().join("More");
    write_maildir(&more, 5, 77);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache"),
    );
    ok(&mut c, &["import", &format!("maildir:{}", more.display())]);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("fresh"),
    );
    let out = run(&mut c, &["list", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("damaged on the store") && stderr.contains("SHA-256"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        15,
        "every message listed"
    );
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("fresh"),
    );
    let restored_dir = sandbox.path().join("r");
    let out = run(
        &mut c,
        &[
            "restore",
            "--to",
            &format!("maildir:{}", restored_dir.display()),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the 10 damaged are skipped and said"
    );
    let restored = std::fs::read_dir(restored_dir.join("cur")).unwrap().count();
    assert_eq!(restored, 5, "the intact commit is restored");
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("fresh"),
    );
    assert_eq!(run(&mut c, &["verify"]).status.code(), Some(3));
    // The pack made whole on the store again: that machine fetches it and is whole too.
    bytes[last] ^= 1;
    moto.put(BUCKET, &pack, &bytes);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("fresh"),
    );
    let out = run(&mut c, &["verify", "--full"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fetched"), "{stderr}");

    // A commit record naming a file outside the archive is refused, and nothing is written there.
    let record = serde_json::json!({
        "commit": 3, "format": 1, "tool": "evil", "command": "backup",
        "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:00Z",
        "segment": {"name": "00000003.jsonl.zst", "size": 0, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        "packs": [{"name": "../../../escaped.pack", "size": 1}],
        "entries": 0, "new_objects": 0, "raw_bytes": 0, "stored_bytes": 0
    });
    moto.put(BUCKET, "mail/home/catalog/00000003.jsonl.zst", b"");
    moto.put(
        BUCKET,
        "mail/home/commits/00000003.json",
        record.to_string().as_bytes(),
    );
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("cache"),
    );
    let out = run(&mut c, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot hold"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sandbox.path().join("escaped.pack").exists());
}

#[test]
fn a_backup_deletes_from_the_server_only_what_is_up_on_the_store() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let dovecot = Dovecot::start();
    let mut rng = Rng(5);
    for n in 0..20 {
        dovecot.add_message(&format!("{n:06}.gen"), &generated_message(n, &mut rng));
    }
    let sandbox = Sandbox::new();
    let cache = sandbox.path().join("cache");
    let url = format!("pop3://{}@127.0.0.1:{}", dovecot.user(), dovecot.pop3_port);
    let ca = dovecot.ca_pem();
    let backup = || {
        let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
        c.env("POPVAULT_PASSWORD", dovecot.password());
        run(
            &mut c,
            &[
                "backup",
                &url,
                "--ca-file",
                ca.to_str().unwrap(),
                "--delete-after-days",
                "0",
            ],
        )
    };
    // The store takes packs and segments but no commit record: nothing is up, nothing deleted.
    proxy.fail("PUT", "/commits/", Fault::Status500, None);
    let out = backup();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        dovecot.messages_held(),
        20,
        "a message was deleted before its commit was up"
    );
    proxy.heal();
    let out = backup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dovecot.messages_held(),
        0,
        "once up (and re-verified), they are deleted"
    );
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], 20, "{stats}");
}

#[test]
fn a_dead_writers_leftovers_and_its_lock_do_not_block_the_others() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    write_maildir(&maildir, 10, 6);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("a"));
    ok(
        &mut c,
        &["import", &format!("maildir:{}", maildir.display())],
    );
    // A writer on another machine died after its segment went up, before its record, and
    // long ago: its lock is stale.
    moto.put(
        BUCKET,
        "mail/home/catalog/00000002.jsonl.zst",
        b"a dead writer's segment",
    );
    let lock = serde_json::json!({
        "host": "dead-machine", "pid": 1, "command": "backup",
        "taken": (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339(),
    });
    moto.put(
        BUCKET,
        "mail/home/locks/dead-machine-1-1.json",
        lock.to_string().as_bytes(),
    );
    let more = sandbox.path().join("More");
    write_maildir(&more, 4, 60);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("b"));
    ok(&mut c, &["import", &format!("maildir:{}", more.display())]);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("c"));
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], 14, "{stats}");
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("c"));
    ok(&mut c, &["verify", "--full"]);
    let live_locks = |moto: &Moto| {
        moto.objects(BUCKET)
            .into_iter()
            .filter(|k| k.contains("/locks/") && moto.get(BUCKET, k).is_some())
            .count()
    };
    assert_eq!(
        live_locks(&moto),
        0,
        "the stale lock was cleared, and the writer's own"
    );

    // A live lock: a writer fails with exit 5, or with --wait waits for it to go.
    let live = serde_json::json!({
        "host": "busy-machine", "pid": 7, "command": "backup",
        "taken": chrono::Utc::now().to_rfc3339(),
    });
    moto.put(
        BUCKET,
        "mail/home/locks/busy-machine-7-1.json",
        live.to_string().as_bytes(),
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("b"));
    let out = run(&mut c, &["import", &format!("maildir:{}", more.display())]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &sandbox.path().join("b"));
    let child = c
        .args(["import", "--wait", &format!("maildir:{}", more.display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    moto.delete(BUCKET, "mail/home/locks/busy-machine-7-1.json");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_mistyped_s3_location_is_refused_not_made_a_directory() {
    let sandbox = Sandbox::new();
    for typo in ["S3://pv-test/mail", "s3:/pv-test/mail"] {
        let out = sandbox
            .command()
            .current_dir(sandbox.path())
            .args(["--archive", typo, "init"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{typo}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("s3://BUCKET/PREFIX"), "{stderr}");
    }
    assert!(!sandbox.path().join("S3:").exists() && !sandbox.path().join("s3:").exists());
}

/// A Maildir of `count` 2 MiB messages of random hex, which compress to about half.
fn large_maildir(dir: &Path, count: u64, rng: &mut Rng) -> Vec<Vec<u8>> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    (0..count)
        .map(|n| {
            let mut m = format!("From: a@example.org\r\nSubject: large {n}\r\n\r\n").into_bytes();
            while m.len() < 2 << 20 {
                m.extend_from_slice(
                    format!("{:016x}{:016x}\r\n", rng.next(), rng.next()).as_bytes(),
                );
            }
            std::fs::write(dir.join(format!("cur/{n}.large:2,S")), &m).unwrap();
            m
        })
        .collect()
}

#[test]
fn a_large_pack_goes_up_in_parts_each_retried_alone_and_a_failed_upload_is_aborted() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let sandbox = Sandbox::new();
    let dir = sandbox.path().join(".config/popvault");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "[s3]\npart_size_mib = 5\n").unwrap();
    // Messages that compress to about half: a pack of some 20 MiB, four parts of 5 MiB.
    let mut rng = Rng(77);
    let maildir = sandbox.path().join("Maildir");
    let messages = large_maildir(&maildir, 20, &mut rng);
    let cache = sandbox.path().join("cache");
    // A connection reset in the middle of a part: that part is sent again, not the pack.
    proxy.fail("PUT", "uploadId=", Fault::ResetMidUpload, Some(1));
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
    let out = run(
        &mut c,
        &["import", &format!("maildir:{}", maildir.display())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pack is one object made of parts (its ETag says how many), whole and readable.
    let (status, listing) = moto.raw("GET", &format!("/{BUCKET}?list-type=2"), b"");
    assert_eq!(status, 200, "{listing}");
    let pack_etag = listing
        .split("<Contents>")
        .find(|c| c.contains("/packs/"))
        .and_then(|c| c.split("<ETag>").nth(1))
        .and_then(|e| e.split("</ETag>").next())
        .unwrap_or_else(|| panic!("no pack in {listing}"))
        .replace("&#34;", "")
        .replace('"', "");
    assert!(
        pack_etag.ends_with("-4") || pack_etag.ends_with("-5"),
        "a multipart ETag: {pack_etag}"
    );
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    ok(&mut c, &["verify", "--full"]);
    for m in &messages[..3] {
        let mut c = s3_command(
            &sandbox,
            &moto,
            &moto.endpoint(),
            &sandbox.path().join("other"),
        );
        let out = run(&mut c, &["cat", &sha256_hex(m)]);
        assert!(out.status.success());
        assert!(out.stdout == *m, "cat gives the bytes imported");
    }

    // The store failing every completion: one line, nothing committed, no parts left open.
    let more = sandbox.path().join("More");
    large_maildir(&more, 14, &mut rng);
    proxy.fail("POST", "uploadId=", Fault::Status500, None);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
    let out = run(&mut c, &["import", &format!("maildir:{}", more.display())]);
    proxy.heal();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("COMPLETE MULTIPART UPLOAD") && stderr.contains("500"),
        "{stderr}"
    );
    assert_eq!(
        moto.open_uploads(BUCKET),
        Vec::<String>::new(),
        "parts left open"
    );
    // The next run sends it.
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &cache);
    ok(&mut c, &["import", &format!("maildir:{}", more.display())]);
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("third"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], 34, "{stats}");
    assert_nothing_overwritten(&moto);
}

#[test]
fn forward_into_an_s3_archive_delivers_once_and_keeps_its_journal_on_this_machine() {
    use crate::forward::{configure, delivered_once, wave};
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    configure(
        &sandbox,
        &dovecot,
        dovecot.imaps_port,
        "delete_after_days = 0",
    );
    let cache = sandbox.path().join("cache");
    let mut sent = wave(&dovecot, 0, 4);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    let out = run(&mut c, &["forward", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 to deliver"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (first, count) in [(4, 0), (4, 3)] {
        sent.extend(wave(&dovecot, first, count));
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        ok(&mut c, &["forward", "-q"]);
        let there = delivered_once(&dovecot);
        assert_eq!(there.len(), sent.len());
    }
    // Archived (on the store) and delivered: the next pass deletes them from the POP3 server.
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    ok(&mut c, &["forward", "-q"]);
    assert_eq!(dovecot.messages_held(), 0);
    assert_eq!(delivered_once(&dovecot).len(), sent.len());
    // The archive on the store holds every message (another machine reads it)...
    let mut c = s3_command(
        &sandbox,
        &moto,
        &moto.endpoint(),
        &sandbox.path().join("other"),
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], sent.len() as u64, "{stats}");
    // ...and no journal: delivery state is this machine's.
    assert!(
        archive_keys(&moto).iter().all(|k| !k.contains("/forward/")),
        "{:?}",
        archive_keys(&moto)
    );
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    let status: serde_json::Value =
        serde_json::from_str(&ok(&mut c, &["status", "--json"])).unwrap();
    assert_eq!(
        status["forwards"][0]["delivered"],
        sent.len() as u64,
        "{status}"
    );
    assert_eq!(status["forwards"][0]["pending"], 0, "{status}");
    assert_nothing_overwritten(&moto);
}

#[test]
fn damage_to_this_machines_copy_is_mended_from_the_store_by_verify() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let sandbox = Sandbox::new();
    let cache = sandbox.path().join("cache");
    let mut messages = Vec::new();
    // Two imports: two commits, a pack each.
    for (n, seed) in [(40, 3), (30, 4)] {
        let maildir = sandbox.path().join(format!("Maildir{seed}"));
        messages.extend(write_maildir(&maildir, n, seed));
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        ok(
            &mut c,
            &["import", &format!("maildir:{}", maildir.display())],
        );
    }
    let mut packs: Vec<std::path::PathBuf> = std::fs::read_dir(cache.join("popvault/remote"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path().join("archive/packs")).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    assert_eq!(packs.len(), 2, "{packs:?}");
    let whole: Vec<Vec<u8>> = packs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    };
    let verify = |args: &[&str]| {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        let out = run(&mut c, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // One pack gone from the copy: the next command fetches it again before it reads.
    std::fs::remove_file(&packs[0]).unwrap();
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
    let out = run(&mut c, &["cat", &sha256_hex(&messages[0])]);
    assert!(
        out.stdout == messages[0],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 files missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A directory in a pack's place, and a byte changed in the other pack: the quick check
    // sees the first, and the mending looks at every file.
    std::fs::remove_file(&packs[0]).unwrap();
    std::fs::create_dir(&packs[0]).unwrap();
    flip(&packs[1]);
    let said = verify(&["verify"]);
    assert_eq!(said.matches("fetched it again").count(), 2, "{said}");
    for (path, bytes) in packs.iter().zip(&whole) {
        assert!(std::fs::read(path).unwrap() == *bytes, "mended whole");
    }
    // A change the quick check cannot see is found and mended by --full.
    flip(&packs[0]);
    let said = verify(&["verify"]);
    assert!(
        !said.contains("fetched"),
        "the quick check reads no pack: {said}"
    );
    let said = verify(&["verify", "--full"]);
    assert_eq!(said.matches("fetched it again").count(), 1, "{said}");
    let said = verify(&["verify", "--full"]);
    assert!(!said.contains("fetched"), "{said}");
    for m in &messages {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &cache);
        assert!(run(&mut c, &["cat", &sha256_hex(m)]).stdout == *m);
    }
    assert_nothing_overwritten(&moto);
}

#[test]
fn commits_not_uploaded_that_clash_with_another_machines_are_brought_in_as_new_ones() {
    let moto = Moto::start();
    moto.versioned_bucket(BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let sandbox = Sandbox::new();
    let (laptop, desktop) = (
        sandbox.path().join("laptop"),
        sandbox.path().join("desktop"),
    );
    let maildir = |name: &str, count, seed| {
        let dir = sandbox.path().join(name);
        let messages = write_maildir(&dir, count, seed);
        (format!("maildir:{}", dir.display()), messages)
    };
    // (The laptop always goes through the proxy: a mirror is kept per endpoint.)
    let (first, mut all) = maildir("First", 20, 1);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    ok(&mut c, &["import", &first]);
    // A forward journal: this machine's own, kept in its copy and never uploaded.
    let mirror = std::fs::read_dir(laptop.join("popvault/remote"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let journal = mirror.join("archive/forward/0123456789abcdef.jsonl");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    let journal_text =
        r#"{"start":{"account":"a","destination":"d","since":"2026-01-01T00:00:00Z"}}"#;
    std::fs::write(&journal, format!("{journal_text}\n")).unwrap();
    // The laptop commits, but its record never goes up (the network went away)...
    let (offline, messages) = maildir("Offline", 15, 5);
    all.extend(messages);
    proxy.fail("PUT", "/commits/", Fault::Status500, None);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["import", &offline]);
    assert!(!out.status.success());
    proxy.heal();
    // ...while the desktop uploads its own commit of that number.
    let (other, messages) = maildir("Desktop", 10, 7);
    all.extend(messages);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &desktop);
    ok(&mut c, &["import", &other]);

    // A reader on the laptop shows the store's archive and keeps its own copy aside.
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kept whole at"), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["unique_messages"], 30, "{stats}");
    // status says that mail of the laptop is not on the store, and alerts.
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(6));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["set_aside"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    // A set-aside copy that cannot be read (its header damaged) is kept and named; the writer
    // goes on with its own work.
    let aside = std::fs::read_dir(&mirror)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("unsent"))
        .unwrap();
    let header = aside.join("popvault-archive.json");
    let header_bytes = std::fs::read(&header).unwrap();
    std::fs::write(&header, b"{bad").unwrap();
    let (early, messages) = maildir("Early", 3, 11);
    all.extend(messages);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["import", &early]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot bring in"), "{stderr}");
    assert!(aside.is_dir(), "kept");
    std::fs::write(&header, header_bytes).unwrap();
    // The laptop's next writer brings the laptop's commit in as a new one, then does its own.
    let (last, messages) = maildir("Last", 5, 9);
    all.extend(messages);
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["import", &last]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("brought into") && stderr.contains("the 15 messages"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        format!("{journal_text}\n"),
        "the journal goes on in the copy in use"
    );
    let left: Vec<_> = std::fs::read_dir(&mirror)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("unsent"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let mut c = s3_command(&sandbox, &moto, &proxy.endpoint(), &laptop);
    let out = run(&mut c, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new machine sees every message once, whole.
    let fresh = sandbox.path().join("fresh");
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &fresh);
    ok(&mut c, &["verify", "--full"]);
    let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &fresh);
    let stats: serde_json::Value = serde_json::from_str(&ok(&mut c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["unique_messages"], 53, "{stats}");
    for m in &all {
        let mut c = s3_command(&sandbox, &moto, &moto.endpoint(), &fresh);
        assert!(run(&mut c, &["cat", &sha256_hex(m)]).stdout == *m);
    }
    // No record or pack was replaced. The laptop's segment 2, which no record named, was
    // cleared by the desktop's writer before it wrote its own (doc/FORMAT.md): a version, a
    // delete marker, a version.
    for (key, versions) in moto.versions(BUCKET) {
        let expected = match key.as_str() {
            k if k.contains("/locks/") => 2,
            k if k.ends_with("/catalog/00000002.jsonl.zst") => 3,
            _ => 1,
        };
        assert!(versions <= expected, "{key} has {versions} versions");
    }
}
