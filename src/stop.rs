//! `Stop`: a request to stop at the next safe point, shared by every long-running command.
//!
//! The CLI sets it on SIGTERM or SIGINT; the library only reads it. Safe points are message
//! boundaries: what was fully received or written is committed, nothing is left half-done, and
//! a re-run continues where the stopped one ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A request that is never made unless [`Stop::request`] is called.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// The flag itself, for a signal handler to set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
