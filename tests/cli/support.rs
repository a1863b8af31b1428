//! Running the binary in an isolated environment, and generating mail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// A temp dir with an isolated HOME, so no user config or archive is touched.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn archive(&self) -> PathBuf {
        self.path().join("archive")
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popvault"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("POPVAULT_ARCHIVE", self.archive());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs with `POPVAULT_PASSWORD` set (how the tests give popvault a server's password).
    pub fn run_with_password(&self, args: &[&str], password: &str) -> Output {
        self.command()
            .args(args)
            .env("POPVAULT_PASSWORD", password)
            .output()
            .unwrap()
    }

    /// Runs and asserts the exit status, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "popvault {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cat(&self, id: &str) -> Vec<u8> {
        let out = self.run(&["cat", id]);
        assert!(
            out.status.success(),
            "cat {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `list --json` parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.ok(&["list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The recovery script of doc/FORMAT.md, written to `dir/recover.py`.
pub fn recovery_script(dir: &Path) -> PathBuf {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/FORMAT.md"))
        .unwrap();
    let start = doc
        .find("<!-- recovery-script-start -->\n```python\n")
        .unwrap();
    let script = &doc[start..];
    let script = &script
        [script.find("#!").unwrap()..script.find("```\n<!-- recovery-script-end -->").unwrap()];
    let path = dir.join("recover.py");
    std::fs::write(&path, script).unwrap();
    path
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A small deterministic generator (xorshift), so generated mailboxes are the same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A generated message: CRLF line endings, a few body lines, some starting with dots and "From ".
pub fn generated_message(n: u64, rng: &mut Rng) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {n} <s{n}@example.org>\r\nTo: alice@example.org\r\nSubject: message {n}\r\n\
         Date: Mon, {} Jan 2024 10:{:02}:00 +0100\r\nMessage-ID: <{n}.{}@gen.example>\r\n\r\n",
        1 + n % 28,
        n % 60,
        rng.next()
    );
    for i in 0..(rng.next() % 40) {
        match i % 9 {
            3 => m.push_str(".a line starting with a dot\r\n"),
            5 => m.push_str("From here on, a body line that mbox must quote\r\n"),
            _ => m.push_str(&format!("line {i} of message {n}: {:x}\r\n", rng.next())),
        }
    }
    m.into_bytes()
}

/// Writes `count` generated messages into `dir/{cur,new,tmp}` as a Maildir; returns their bytes.
pub fn write_maildir(dir: &Path, count: u64, seed: u64) -> Vec<Vec<u8>> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            std::fs::write(dir.join("cur").join(format!("{n:06}.gen:2,S")), &m).unwrap();
            m
        })
        .collect()
}

/// Starts `command`, SIGKILLs it after `millis` ms, and says whether it was still running then
/// (a kill -9 in the middle of the work, not after it).
pub fn kill_9_after(command: &mut std::process::Command, millis: u64) -> bool {
    let mut child = command.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(millis));
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    running
}
