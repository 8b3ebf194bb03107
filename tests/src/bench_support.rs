//! Harness access for `kring-bench`: the process id of a running relay (for its
//! resident memory, read from `/proc/PID/status`). The relay's data directory (for
//! the stored-bytes figures) is [`Federation::data_dir`].

use crate::Federation;

impl Federation {
    /// The operating-system process id of relay `id`, if it runs.
    pub fn relay_pid(&self, id: &str) -> Option<u32> {
        self.relays.get(id).map(|p| p.child.id())
    }
}
