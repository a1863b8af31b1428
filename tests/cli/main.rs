//! CLI integration tests: the real binary on real files, asserting on output, exit codes and bytes.

mod archive_corpus;
mod archive_crash;
mod archive_damage;
mod support;
