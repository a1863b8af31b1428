//! kill -9 during an import, at random moments: the archive always verifies, and re-running the
//! import ends with every message present exactly once.

use crate::support::{Rng, Sandbox, kill_9_after, sha256_hex, write_maildir};

#[test]
fn kill_9_mid_import_loses_nothing_committed_and_rerun_completes() {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("mail");
    let messages = write_maildir(&maildir, 5000, 7);
    let source = format!("maildir:{}", maildir.display());
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    let mut killed_mid_run = 0;
    for _ in 0..6 {
        let mut command = sandbox.command();
        command
            .args(["import", &source])
            .stdout(std::process::Stdio::null());
        killed_mid_run += usize::from(kill_9_after(&mut command, 10 + rng.next() % 200));
        let out = sandbox.run(&["verify", "--full"]);
        assert!(
            out.status.success(),
            "verify after kill -9: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        killed_mid_run > 0,
        "no run was interrupted: the test proved nothing"
    );
    sandbox.ok(&["import", &source]);
    sandbox.ok(&["verify", "--full"]);
    let listed = sandbox.list();
    assert_eq!(listed.len(), messages.len());
    let stats: serde_json::Value = serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
    assert_eq!(
        stats["messages"],
        messages.len() as u64,
        "each message recorded exactly once"
    );
    let ids: std::collections::HashSet<&str> =
        listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for m in &messages {
        assert!(ids.contains(sha256_hex(m).as_str()));
    }
}
