//! OAuth 2.0 logins (XOAUTH2, OAUTHBEARER) against a real Dovecot whose `oauth2` passdb asks a
//! token endpoint on 127.0.0.1: POP3 for `backup`, IMAP for `forward`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::dovecot::Dovecot;
use crate::common::oauth::{TokenEndpoint, dovecot_with_oauth};
use crate::forward::{FOLDER, folder};
use crate::support::{Rng, Sandbox, generated_message};

/// A token shaped like Google's, which must never appear in any output.
const TOKEN: &str = "ya29.a0AfB_byC-0auth-t0ken-0f-a-kn0wn-v4lue";
const WRONG_TOKEN: &str = "ya29.a0AfB_byC-expired-t0ken-v4lue";

#[test]
fn pop3_logins_with_an_oauth_token_are_checked_by_dovecot_and_a_bad_token_fails_in_one_line() {
    let endpoint = TokenEndpoint::start(TOKEN, "alice");
    let conf = tempfile::tempdir().unwrap();
    let dovecot = dovecot_with_oauth(&endpoint, conf.path());
    let sandbox = Sandbox::new();
    let url = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    let mut rng = Rng(41);
    for (n, method) in ["xoauth2", "oauthbearer"].into_iter().enumerate() {
        dovecot.add_message(&format!("m{n}"), &generated_message(n as u64, &mut rng));
        let asked = endpoint.questions();
        let out = sandbox
            .command()
            .args(["backup", &url, "--ca-file", ca.to_str().unwrap()])
            .args(["--auth", method])
            .env("POPVAULT_PASSWORD", TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{method}: {stderr}");
        // The login went through the token endpoint, not the password file.
        assert!(
            endpoint.questions() > asked,
            "{method}: Dovecot never asked"
        );
        assert_eq!(sandbox.list().len(), n + 1, "{method}");

        let out = sandbox
            .command()
            .args(["backup", &url, "--ca-file", ca.to_str().unwrap()])
            .args(["--auth", method])
            .env("POPVAULT_PASSWORD", WRONG_TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{method}: {stderr}");
        assert!(
            stderr.contains("error: alice@127.0.0.1") && stderr.contains("rejected"),
            "{method}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        for secret in [TOKEN, WRONG_TOKEN] {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{method}: the token was shown: {stderr}"
            );
        }
        // A name that is not the token's owner is refused too: the name goes in the SASL
        // message, and Dovecot compares it with the endpoint's answer.
        let other = format!("pop3s://bob@127.0.0.1:{}", dovecot.pop3s_port);
        let out = sandbox
            .command()
            .args(["backup", &other, "--ca-file", ca.to_str().unwrap()])
            .args(["--auth", method])
            .env("POPVAULT_PASSWORD", TOKEN)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One account whose POP3 side logs in with the password and whose IMAP destination logs in
/// with `method` and the token a helper command prints, as users run oama or mutt_oauth2.py.
fn configure(sandbox: &Sandbox, dovecot: &Dovecot, method: &str, token_file: &Path) {
    let dir = sandbox.path().join(".config/popvault");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"
[[account]]
name = "home"
server = "pop3s://{user}@127.0.0.1:{pop3s}"
ca_file = "{ca}"
password_command = "printf %s {password}"
forward_to = "imaps://{user}@127.0.0.1:{imaps}/{FOLDER}"
forward_ca_file = "{ca}"
forward_auth = "{method}"
forward_password_command = "cat {token}"
"#,
        user = dovecot.user(),
        pop3s = dovecot.pop3s_port,
        imaps = dovecot.imaps_port,
        ca = dovecot.ca_pem().display(),
        password = dovecot.password(),
        token = token_file.display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn forward_delivers_over_imap_logins_with_an_oauth_token() {
    let endpoint = TokenEndpoint::start(TOKEN, "alice");
    let conf = tempfile::tempdir().unwrap();
    let dovecot = dovecot_with_oauth(&endpoint, conf.path());
    let token_file = conf.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut rng = Rng(43);
    let mut sent = Vec::new();
    for (n, method) in ["xoauth2", "oauthbearer"].into_iter().enumerate() {
        let sandbox = Sandbox::new();
        configure(&sandbox, &dovecot, method, &token_file);

        let message = generated_message(100 + n as u64, &mut rng);
        dovecot.add_message(&format!("f{n}"), &message);
        sent.push(message);
        let asked = endpoint.questions();
        let out = sandbox.command().args(["forward", "-q"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{method}: {stderr}");
        assert!(!stderr.contains(TOKEN), "{stderr}");
        assert!(
            endpoint.questions() > asked,
            "{method}: Dovecot never asked"
        );
        let there: Vec<Vec<u8>> = folder(&dovecot)
            .iter()
            .map(|m| hex::decode(m["body"].as_str().unwrap()).unwrap())
            .collect();
        // Each sandbox is a fresh archive that starts its journal now: it delivers what the
        // server holds, so the second one delivers the first message again, to the same folder.
        for m in &sent {
            assert!(there.contains(m), "{method}: a message is missing");
        }
    }

    // A token the endpoint refuses: the pass archives, delivers nothing, says so, exits non-zero.
    std::fs::write(&token_file, WRONG_TOKEN).unwrap();
    let sandbox = Sandbox::new();
    configure(&sandbox, &dovecot, "oauthbearer", &token_file);
    let before = folder(&dovecot).len();
    let out = sandbox.command().args(["forward"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains(WRONG_TOKEN) && !stdout.contains(WRONG_TOKEN),
        "{stderr}"
    );
    assert_eq!(folder(&dovecot).len(), before, "nothing delivered");
    assert_eq!(sandbox.list().len(), 2, "the backup pass still archived");
    eprintln!("a refused token, as forward says it:\n{stderr}{stdout}");
}
