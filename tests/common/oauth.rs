//! An OAuth 2.0 token endpoint on 127.0.0.1 for a real Dovecot's `oauth2` passdb, so that
//! XOAUTH2 and OAUTHBEARER are checked by Dovecot's own SASL code, not by a scripted server.
//!
//! Dovecot asks the endpoint about each token (`tokeninfo_url` with the token appended, or
//! `Authorization: Bearer` for introspection); the endpoint knows one token and answers it
//! with the user's name, anything else with 401. Dovecot then checks that the name the client
//! gave in its SASL message is the token's.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::dovecot::Dovecot;

/// The token endpoint, and how many tokens it was asked about (each attempt is one question).
pub struct TokenEndpoint {
    pub port: u16,
    asked: Arc<AtomicUsize>,
}

impl TokenEndpoint {
    /// Answers `token` as belonging to `user`, every other token as invalid.
    pub fn start(token: &'static str, user: &'static str) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let request_line = head.first().cloned().unwrap_or_default();
                let target = request_line.split(' ').nth(1).unwrap_or("");
                let bearer = head
                    .iter()
                    .find_map(|l| l.strip_prefix("Authorization: Bearer "))
                    .map(str::trim);
                let query_token = target.rsplit_once('=').map(|(_, t)| t);
                let valid = bearer == Some(token) || query_token == Some(token);
                let (status, body) = if valid {
                    ("200 OK", format!(r#"{{"email":"{user}","active":"true"}}"#))
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_token"}"#.to_string(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenEndpoint { port, asked }
    }

    pub fn questions(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// A Dovecot whose XOAUTH2 and OAUTHBEARER logins are checked against `endpoint` (its other
/// mechanisms keep the password file). `conf_dir` holds the oauth2 passdb's own file.
pub fn dovecot_with_oauth(endpoint: &TokenEndpoint, conf_dir: &Path) -> Dovecot {
    let oauth_conf = conf_dir.join("dovecot-oauth2.conf.ext");
    let base = format!("http://127.0.0.1:{}", endpoint.port);
    std::fs::write(
        &oauth_conf,
        format!(
            "tokeninfo_url = {base}/tokeninfo?access_token=\n\
             introspection_url = {base}/introspect\n\
             introspection_mode = auth\n\
             username_attribute = email\n"
        ),
    )
    .unwrap();
    let extra = format!(
        "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
        oauth_conf.display()
    );
    Dovecot::start_configured(
        &[("auth_mechanisms", "plain login xoauth2 oauthbearer")],
        &extra,
    )
}
