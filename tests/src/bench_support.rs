//! Harness access for `kring-bench`: the process id of a running relay (for its
//! resident memory, read from `/proc/PID/status`) and the relay's data directory
//! (for the stored-bytes figures).

use std::path::PathBuf;

use crate::Federation;

impl Federation {
    /// The operating-system process id of relay `id`, if it runs.
    pub fn relay_pid(&self, id: &str) -> Option<u32> {
        self.relays.get(id).map(|p| p.child.id())
    }

    /// `DIR/relays/ID/data`: where the relay keeps its store (the `data_dir` the dev
    /// PKI writes into every `relay.toml`).
    pub fn relay_data_dir(&self, id: &str) -> PathBuf {
        self.dir.join("relays").join(id).join("data")
    }
}
