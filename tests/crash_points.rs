//! Power-cut style crash tests through the storage seam: an import is cut at every durable step
//! of the commit protocol in turn (create, write, sync, rename, directory sync); each time the
//! archive must open, verify clean, keep everything committed before, and a re-run must end with
//! every message exactly once; and a commit failing at every step is retried by the same writer.
//! (Its own test binary: the seam is process-wide.)
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

use chrono::Utc;
use popvault::archive::durable::{inject_fault_at, steps_taken};
use popvault::archive::verify::verify;
use popvault::archive::{Archive, Digest, Incoming, Source, Writer};

/// The seam is process-wide: the tests here take turns.
static SEAM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn message(n: usize) -> Vec<u8> {
    format!(
        "Subject: message {n}\r\nMessage-ID: <{n}@crash.test>\r\n\r\n{}\r\n",
        "body line\r\n".repeat(n % 17)
    )
    .into_bytes()
}

fn import(
    root: &Path,
    range: std::ops::Range<usize>,
) -> Result<(), popvault::archive::ArchiveError> {
    let mut writer = Writer::open(root, "crash-test", None)?;
    writer.add_batch(batch(range))?;
    writer.finish().map(drop)
}

fn assert_intact(root: &Path, committed: std::ops::Range<usize>) -> Archive {
    let archive = Archive::open(root).expect("the archive opens after a crash");
    let (report, _) = verify(archive.root(), true, &|_| {}).unwrap();
    assert!(
        report.is_ok(),
        "verify after a crash: {:?} {:?}",
        report.problems,
        report.damaged
    );
    for n in committed {
        let id = Digest::of(&message(n));
        assert_eq!(
            archive.read_message(&id).unwrap(),
            message(n),
            "committed message {n} lost"
        );
    }
    archive
}

#[test]
fn a_crash_at_any_durable_step_loses_only_what_was_not_committed() {
    let _turn = SEAM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    import(&base, 0..50).unwrap();

    // How many durable steps one import of 50 more messages takes.
    let probe = dir.path().join("probe");
    copy_dir(&base, &probe);
    inject_fault_at(0);
    let before = steps_taken();
    import(&probe, 50..100).unwrap();
    let steps = steps_taken() - before;
    assert!(steps > 50, "the seam counted only {steps} steps");
    println!("cutting an import at each of its {steps} durable steps");

    for cut in 1..=steps {
        let root = dir.path().join(format!("cut-{cut}"));
        copy_dir(&base, &root);
        inject_fault_at(cut);
        let outcome = import(&root, 50..100);
        inject_fault_at(0);
        assert!(outcome.is_err(), "step {cut} of {steps} was not cut");
        assert_intact(&root, 0..50);
        import(&root, 50..100).expect("a re-run after the crash completes");
        let archive = assert_intact(&root, 0..100);
        assert_eq!(
            archive.entries().len(),
            100,
            "cut at step {cut}: every message exactly once"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn batch(range: std::ops::Range<usize>) -> Vec<Incoming> {
    range
        .map(|n| Incoming {
            raw: message(n),
            source: Source::Eml {
                path: format!("/m/{n}"),
            },
            flags: None,
            first_seen: Utc::now(),
        })
        .collect()
}

/// A commit that fails at any of its steps (a full disk, say) and is retried by the same
/// writer, as `backup` does: the retry must not leave the failed attempt's files behind under
/// its commit number, nor trip over them.
#[test]
fn a_commit_failing_at_any_step_and_retried_in_process_leaves_a_clean_archive() {
    let _turn = SEAM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    import(&base, 0..50).unwrap();

    let probe = dir.path().join("probe");
    copy_dir(&base, &probe);
    let mut writer = Writer::open(&probe, "crash-test", None).unwrap();
    writer.add_batch(batch(50..100)).unwrap();
    inject_fault_at(0);
    let before = steps_taken();
    writer.commit().unwrap();
    let steps = steps_taken() - before;
    drop(writer);

    for cut in 1..=steps {
        let root = dir.path().join(format!("retry-{cut}"));
        copy_dir(&base, &root);
        let mut writer = Writer::open(&root, "crash-test", None).unwrap();
        writer.add_batch(batch(50..100)).unwrap();
        inject_fault_at(cut);
        let failed = writer.commit();
        inject_fault_at(0);
        assert!(failed.is_err(), "step {cut} of {steps} was not cut");
        // The retry: the messages are added again and committed by the same writer.
        writer.add_batch(batch(50..100)).unwrap();
        writer
            .finish()
            .unwrap_or_else(|e| panic!("cut at step {cut}: the retried commit failed: {e}"));
        let archive = assert_intact(&root, 0..100);
        assert_eq!(archive.entries().len(), 100, "cut at step {cut}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
