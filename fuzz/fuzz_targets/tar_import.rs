//! `import tar:` of arbitrary files: refused or imported, never a panic, never a file outside
//! the archive.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use popvault::archive::Writer;
use popvault::import::{import, ImportOptions, ImportSource};
use popvault::stop::Stop;

thread_local! {
    static STATE: RefCell<Option<(tempfile::TempDir, Writer)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let (dir, writer) = state.get_or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let writer = Writer::open(&dir.path().join("archive"), "fuzz", None).unwrap();
            (dir, writer)
        });
        let input = dir.path().join("input.tar");
        std::fs::write(&input, data).unwrap();
        let _ = import(writer, &ImportSource::Tar(input), &ImportOptions::default(), &Stop::new(), &mut |_| {});
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(name == "archive" || name == "input.tar", "a file appeared outside the archive: {name:?}");
        }
    });
});
