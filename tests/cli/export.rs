//! `popvault export` and `import tar:`: a deterministic, self-verifying round trip, and hostile
//! tars refused with nothing written outside the archive.

use std::fs;
use std::process::Command;

use crate::support::{Sandbox, corpus_dir, write_maildir};

fn archive_with_mail() -> Sandbox {
    let sandbox = Sandbox::new();
    write_maildir(&sandbox.path().join("gen"), 40, 5);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("gen").display()),
        &format!(
            "mbox:{}",
            corpus_dir().join("mail-box-mbox_src.mbox").display()
        ),
        &format!("eml:{}", corpus_dir().join("git-nul-plain.eml").display()),
    ]);
    sandbox
}

#[test]
fn export_import_round_trip_is_identical_deterministic_and_checkable_with_standard_tools() {
    let sandbox = archive_with_mail();
    for name in ["out.tar", "out.tar.zst"] {
        let file = sandbox.path().join(name);
        sandbox.ok(&["export", file.to_str().unwrap()]);
        let first = fs::read(&file).unwrap();
        sandbox.ok(&["export", file.to_str().unwrap()]);
        assert_eq!(
            fs::read(&file).unwrap(),
            first,
            "{name}: the same archive must give the same bytes"
        );

        // The two documented commands, without popvault.
        let dir = sandbox.path().join(format!("x-{name}"));
        fs::create_dir(&dir).unwrap();
        let mut tar = Command::new("tar");
        if name.ends_with(".zst") {
            tar.arg("--zstd");
        }
        assert!(
            tar.arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.contains(&"MANIFEST.jsonl".to_string())
                && names.contains(&"SHA256SUMS".to_string())
        );
        let check = Command::new("sha256sum")
            .args(["-c", "--quiet", "SHA256SUMS"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );

        let other = Sandbox::new();
        other.ok(&["import", &format!("tar:{}", file.display())]);
        other.ok(&["verify", "--full"]);
        assert_eq!(
            other.ok(&["list", "--json"]),
            sandbox.ok(&["list", "--json"]),
            "{name}: list --json differs after the round trip"
        );
        let again = other.ok(&["import", &format!("tar:{}", file.display())]);
        assert!(again.contains(" 0 new"), "{again}");
    }
    // A damaged export is caught.
    let file = sandbox.path().join("out.tar");
    let mut bytes = fs::read(&file).unwrap();
    let at = bytes.len() - 3000;
    bytes[at] ^= 0x20;
    fs::write(&file, bytes).unwrap();
    // ...and named, and the rest imported (exit 3, as restore and export skip damage).
    let damaged = Sandbox::new();
    let out = damaged.run(&["import", &format!("tar:{}", file.display())]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not hash to its name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(damaged.list().len(), sandbox.list().len() - 1);
}

/// An export extracted and packed again by GNU tar (directory members, `./` names, any order)
/// imports the same; compressions popvault does not read are named.
#[test]
fn an_export_repacked_by_gnu_tar_imports_and_gzip_is_named() {
    let sandbox = Sandbox::new();
    crate::support::write_maildir(&sandbox.path().join("mail"), 8, 12);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("mail").display()),
    ]);
    let export = sandbox.path().join("e.tar");
    sandbox.ok(&["export", export.to_str().unwrap()]);
    let x = sandbox.path().join("x");
    fs::create_dir(&x).unwrap();
    let tar = |args: &[&str]| {
        let out = Command::new("tar").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tar(&["-xf", export.to_str().unwrap(), "-C", x.to_str().unwrap()]);
    let repacked = sandbox.path().join("g.tar");
    tar(&[
        "-cf",
        repacked.to_str().unwrap(),
        "-C",
        x.to_str().unwrap(),
        ".",
    ]);
    let other = Sandbox::new();
    other.ok(&["import", &format!("tar:{}", repacked.display())]);
    assert_eq!(
        other.ok(&["list", "--json"]),
        sandbox.ok(&["list", "--json"])
    );

    let gz = sandbox.path().join("g.tar.gz");
    tar(&["-czf", gz.to_str().unwrap(), "-C", x.to_str().unwrap(), "."]);
    let out = other.run(&["import", &format!("tar:{}", gz.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is gzip-compressed"), "{stderr}");
    assert!(
        stderr.is_ascii(),
        "no binary bytes on the terminal: {stderr}"
    );
}

/// A raw tar member header: any name, type and claimed size (the tar crate's builder refuses
/// hostile names, so the bytes are made by hand).
fn raw_member(
    name: &[u8],
    kind: u8,
    data: &[u8],
    claimed_size: Option<u64>,
    link: &[u8],
) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link.len()].copy_from_slice(link);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_size(claimed_size.unwrap_or(data.len() as u64));
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(members: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = members.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_tars_are_refused_and_nothing_is_written_outside_the_archive() {
    let sandbox = Sandbox::new();
    let manifest = raw_member(b"MANIFEST.jsonl", b'0', b"", None, b"");
    let victim = sandbox.path().join("victim");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            tar_of(&[
                manifest.clone(),
                raw_member(b"../victim", b'0', b"evil", None, b""),
            ]),
            "'..'",
        ),
        (
            "absolute",
            tar_of(&[
                manifest.clone(),
                raw_member(
                    victim.to_str().unwrap().as_bytes(),
                    b'0',
                    b"evil",
                    None,
                    b"",
                ),
            ]),
            "absolute",
        ),
        (
            "symlink",
            tar_of(&[
                manifest.clone(),
                raw_member(b"messages/link.eml", b'2', b"", None, b"/etc/passwd"),
            ]),
            "is a symbolic link, not a file",
        ),
        (
            "hardlink",
            tar_of(&[
                manifest.clone(),
                raw_member(b"messages/hard.eml", b'1', b"", None, b"MANIFEST.jsonl"),
            ]),
            "is a hard link, not a file",
        ),
        (
            "device",
            tar_of(&[
                manifest.clone(),
                raw_member(b"messages/dev.eml", b'3', b"", None, b""),
            ]),
            "is a character device, not a file",
        ),
        (
            "huge",
            tar_of(&[
                manifest.clone(),
                raw_member(b"messages/huge.eml", b'0', b"x", Some(1 << 40), b""),
            ]),
            "claims",
        ),
        (
            "no manifest",
            tar_of(&[raw_member(b"messages/x.eml", b'0', b"x", None, b"")]),
            "not a popvault export",
        ),
        (
            "stranger",
            tar_of(&[
                manifest.clone(),
                raw_member(b"notes.txt", b'0', b"hi", None, b""),
            ]),
            "not a popvault export",
        ),
        (
            // Prose is no tar: said so, without the tar crate's quoting of the bytes.
            "prose",
            "Dear Sir, this is a letter, not a tar.\n"
                .repeat(40)
                .into_bytes(),
            "is not a tar archive, or it is damaged",
        ),
        (
            "cut off",
            {
                let mut t = tar_of(&[
                    manifest.clone(),
                    raw_member(
                        format!("messages/{}.eml", "ab".repeat(32)).as_bytes(),
                        b'0',
                        &[b'x'; 4000],
                        None,
                        b"",
                    ),
                ]);
                t.truncate(512 * 4);
                t
            },
            "is not a tar archive, or it is damaged",
        ),
    ];
    for (what, bytes, needle) in cases {
        let file = sandbox
            .path()
            .join(format!("{}.tar", what.replace(' ', "-")));
        fs::write(&file, bytes).unwrap();
        let out = sandbox.run(&["import", &format!("tar:{}", file.display())]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("is refused")
                || stderr.contains("not a popvault export")
                || stderr.contains("not a tar archive"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("Dear Sir"), "{what}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{what}: expected {needle:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !victim.exists() && !sandbox.path().join("../victim").exists(),
            "{what}: a file was written outside the archive"
        );
    }
    let commits = fs::read_dir(sandbox.archive().join("commits"))
        .unwrap()
        .count();
    assert_eq!(commits, 0, "nothing was committed from a hostile tar");
}

/// A real export with one hostile member at its very end: refused before a single message of
/// it is added (more than a commit's worth of messages come first).
#[test]
fn a_hostile_member_after_thousands_of_good_ones_adds_nothing() {
    // Enough before the bad member (2,600 messages of about 20 kB) for the writer to have
    // taken several 16 MiB batches and passed a commit (2,000 messages) without the pre-scan.
    let source = Sandbox::new();
    let many = source.path().join("many");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(many.join(sub)).unwrap();
    }
    let mut rng = crate::support::Rng(11);
    for n in 0..2_600u64 {
        let mut message = crate::support::generated_message(n, &mut rng);
        message.extend(
            (0..2_400)
                .flat_map(|_| rng.next().to_le_bytes())
                .map(|b| b'a' + b % 26),
        );
        message.extend_from_slice(b"\r\n");
        fs::write(many.join("cur").join(format!("{n}.x:2,S")), message).unwrap();
    }
    source.ok(&[
        "import",
        &format!("maildir:{}", source.path().join("many").display()),
    ]);
    let export = source.path().join("export.tar");
    source.ok(&["export", export.to_str().unwrap()]);

    let mut good = tar::Archive::new(fs::File::open(&export).unwrap());
    let mut rebuilt = tar::Builder::new(Vec::new());
    for entry in good.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        rebuilt.append(&header, &mut entry).unwrap();
    }
    let mut members = rebuilt.into_inner().unwrap();
    members.truncate(members.len() - 1024); // the end-of-archive blocks go after the last member
    members.extend(raw_member(
        b"messages/link.eml",
        b'2',
        b"",
        None,
        b"/etc/passwd",
    ));
    let hostile = source.path().join("hostile.tar");
    fs::write(&hostile, tar_of(&[members])).unwrap();

    let target = Sandbox::new();
    let out = target.run(&["import", &format!("tar:{}", hostile.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing from it was written"), "{stderr}");
    assert_eq!(
        target.list().len(),
        0,
        "messages were committed from a refused tar"
    );
}

/// `popvault export mail.tar` in the current directory works; a directory as the file is
/// refused before anything is written, and no temp file is left behind.
#[test]
fn export_to_a_bare_file_name_works_and_to_a_directory_is_refused_cleanly() {
    let sandbox = archive_with_mail();
    let out = sandbox
        .command()
        .args(["export", "bare.tar"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sandbox.path().join("bare.tar").is_file());

    let dir = sandbox.path().join("a-directory");
    fs::create_dir(&dir).unwrap();
    let out = sandbox.run(&["export", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
    let leftovers: Vec<_> = fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Export names say what the file is: `.TAR.ZST` is zstd whatever its case, gzip, bzip2 and
/// xz names are refused with nothing written, and `-` is standard output, which `import tar:-`
/// reads back from standard input.
#[test]
fn export_names_are_honoured_and_dash_is_standard_output_and_input() {
    let sandbox = archive_with_mail();
    let upper = sandbox.path().join("MAIL.TAR.ZST");
    sandbox.ok(&["export", upper.to_str().unwrap()]);
    let bytes = fs::read(&upper).unwrap();
    assert_eq!(&bytes[..4], &[0x28, 0xB5, 0x2F, 0xFD], "not a zstd file");

    for name in ["mail.tar.gz", "mail.tgz", "mail.tar.bz2", "mail.tar.XZ"] {
        let file = sandbox.path().join(name);
        let out = sandbox.run(&["export", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("NAME.tar.zst"), "{name}: {stderr}");
        assert!(!file.exists(), "{name} was written");
    }

    let out = sandbox
        .command()
        .args(["export", "-"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !sandbox.path().join("-").exists(),
        "export - wrote a file named -"
    );
    let plain = sandbox.path().join("plain.tar");
    sandbox.ok(&["export", plain.to_str().unwrap()]);
    assert_eq!(
        out.stdout,
        fs::read(&plain).unwrap(),
        "export - must write the same tar as export FILE.tar"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standard output"),
        "the summary goes to standard error"
    );

    let other = Sandbox::new();
    let mut import = other
        .command()
        .args(["import", "tar:-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &out.stdout).unwrap();
    let done = import.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let ids = |s: &Sandbox| {
        let mut ids: Vec<String> = s.list().iter().map(|m| m["id"].to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&other), ids(&sandbox));
    assert!(
        fs::read_dir(other.archive().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the spooled copy of standard input was left in tmp/"
    );

    // From a FIFO: opened once (a second open would wait for ever, the bytes written lost).
    let third = Sandbox::new();
    let fifo = third.path().join("export.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut import = third
        .command()
        .args(["import", &format!("tar:{}", fifo.display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tar = out.stdout.clone();
    let writer = std::thread::spawn(move || fs::write(fifo, tar));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while import.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            import.kill().unwrap();
            panic!("import tar:FIFO hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let done = import.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        writer.join().unwrap().is_ok(),
        "the writer of the FIFO lost its bytes"
    );
    assert_eq!(ids(&third), ids(&sandbox));
}

/// A message piped in (`eml:-`, `eml:/dev/stdin`, `mbox:/dev/stdin`, a FIFO) imports with its
/// real size, as an MDA would deliver it.
#[test]
fn standard_input_and_fifos_import_with_their_sizes() {
    let sandbox = Sandbox::new();
    let pipe_in = |spec: &str, bytes: &[u8]| {
        let mut child = sandbox
            .command()
            .args(["import", "--json", spec])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let one = b"From: a@example.org\nSubject: one\n\nbody one\n";
    let report = pipe_in("eml:-", one);
    assert_eq!(
        (report["new"].as_u64(), report["bytes"].as_u64()),
        (Some(1), Some(one.len() as u64))
    );
    let two = b"From: b@example.org\nSubject: two\n\nbody two\n";
    let report = pipe_in("eml:/dev/stdin", two);
    assert_eq!(
        (report["new"].as_u64(), report["bytes"].as_u64()),
        (Some(1), Some(two.len() as u64))
    );
    let mbox = b"From x@y Mon Jan  1 00:00:00 2024\nFrom: c@example.org\n\nthree\n\nFrom x@y Tue Jan  2 00:00:00 2024\nFrom: d@example.org\n\nfour\n";
    let report = pipe_in("mbox:/dev/stdin", mbox);
    assert_eq!(report["new"].as_u64(), Some(2), "{report}");

    let fifo = sandbox.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let three = b"From: e@example.org\nSubject: fifo\n\nthrough a fifo\n".to_vec();
    let writer = {
        let fifo = fifo.clone();
        let three = three.clone();
        std::thread::spawn(move || fs::write(fifo, three).unwrap())
    };
    let out = sandbox.run(&["import", "--json", &format!("eml:{}", fifo.display())]);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["bytes"].as_u64(),
        Some(three.len() as u64),
        "{report}"
    );

    let bodies: Vec<Vec<u8>> = sandbox
        .list()
        .iter()
        .map(|m| sandbox.cat(m["id"].as_str().unwrap()))
        .collect();
    for expected in [&one[..], &two[..], &three[..]] {
        assert!(
            bodies.iter().any(|b| b == expected),
            "a piped message is not archived byte for byte"
        );
    }
    assert_eq!(bodies.len(), 5);

    let out = sandbox.run(&["import", "eml:-", "mbox:-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read once"));
}
