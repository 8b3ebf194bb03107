//! The sans-IO key-value interface the MLS storage is built on, and an in-memory
//! implementation of it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// An atomic batch of writes: each entry sets `key` to `Some(value)` or removes
/// `key` when the value is `None`. Entries are applied in order, so a later entry
/// for the same key wins.
pub type KvBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A byte-oriented key-value store that [`KvStorage`](super::KvStorage) keeps MLS
/// state in.
///
/// Implementations do the actual I/O (for example on a `sled::Tree`); this crate
/// never does. Every method must either complete or fail with an error: partial
/// effects of a failed [`apply`](KvBackend::apply) are not allowed. Durability
/// (flushing to disk) is the implementation's or its owner's choice; openmls
/// expects a write to be visible to every later read through the same backend.
///
/// Give the MLS state a store (for example a sled tree) of its own: its keys
/// start with ASCII labels such as `Tree` and would mix with other data.
pub trait KvBackend {
    /// The error the store reports when an operation fails (I/O error,
    /// corruption, …).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Returns the value stored under `key`, or `None` if there is none.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Stores `value` under `key`, replacing any previous value.
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error>;

    /// Removes the value stored under `key`; removing a missing key succeeds.
    fn remove(&self, key: &[u8]) -> Result<(), Self::Error>;

    /// Applies all writes of `batch` atomically: after a crash either all or
    /// none of them are visible, and concurrent readers never see a part.
    fn apply(&self, batch: KvBatch) -> Result<(), Self::Error>;
}

impl<B: KvBackend + ?Sized> KvBackend for &B {
    type Error = B::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        (**self).get(key)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error> {
        (**self).insert(key, value)
    }

    fn remove(&self, key: &[u8]) -> Result<(), Self::Error> {
        (**self).remove(key)
    }

    fn apply(&self, batch: KvBatch) -> Result<(), Self::Error> {
        (**self).apply(batch)
    }
}

impl<B: KvBackend + ?Sized> KvBackend for Arc<B> {
    type Error = B::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        (**self).get(key)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error> {
        (**self).insert(key, value)
    }

    fn remove(&self, key: &[u8]) -> Result<(), Self::Error> {
        (**self).remove(key)
    }

    fn apply(&self, batch: KvBatch) -> Result<(), Self::Error> {
        (**self).apply(batch)
    }
}

/// Errors of [`MemoryKv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryKvError {
    /// Another thread panicked while writing to the store, so its contents may be
    /// half-updated.
    #[error(
        "the in-memory key-value store is unusable because a thread panicked while \
         writing to it; discard it and reload the state from its source"
    )]
    Poisoned,
}

/// An in-memory [`KvBackend`]: a sorted map behind a lock.
///
/// Meant for tests and for callers that do not need persistence. To simulate
/// closing and reopening a database, take a [`snapshot`](MemoryKv::snapshot) and
/// build a fresh store from it with [`from_entries`](MemoryKv::from_entries).
#[derive(Default)]
pub struct MemoryKv {
    entries: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a store holding `entries`, as if reopened from disk.
    pub fn from_entries(entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        Self {
            entries: RwLock::new(entries),
        }
    }

    /// Returns a copy of all entries, sorted by key.
    pub fn snapshot(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MemoryKvError> {
        self.entries
            .read()
            .map(|entries| entries.clone())
            .map_err(|_| MemoryKvError::Poisoned)
    }

    /// Returns the number of entries.
    pub fn len(&self) -> Result<usize, MemoryKvError> {
        self.entries
            .read()
            .map(|entries| entries.len())
            .map_err(|_| MemoryKvError::Poisoned)
    }

    /// Returns whether the store holds no entries.
    pub fn is_empty(&self) -> Result<bool, MemoryKvError> {
        self.len().map(|len| len == 0)
    }
}

impl fmt::Debug for MemoryKv {
    // Values hold private keys: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("MemoryKv");
        match self.len() {
            Ok(len) => debug.field("entries", &len),
            Err(_) => debug.field("entries", &"<poisoned>"),
        };
        debug.finish_non_exhaustive()
    }
}

impl KvBackend for MemoryKv {
    type Error = MemoryKvError;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        let entries = self.entries.read().map_err(|_| MemoryKvError::Poisoned)?;
        Ok(entries.get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error> {
        let mut entries = self.entries.write().map_err(|_| MemoryKvError::Poisoned)?;
        entries.insert(key.to_vec(), value);
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), Self::Error> {
        let mut entries = self.entries.write().map_err(|_| MemoryKvError::Poisoned)?;
        entries.remove(key);
        Ok(())
    }

    fn apply(&self, batch: KvBatch) -> Result<(), Self::Error> {
        // One write lock for the whole batch: readers see all of it or none.
        let mut entries = self.entries.write().map_err(|_| MemoryKvError::Poisoned)?;
        for (key, value) in batch {
            match value {
                Some(value) => {
                    entries.insert(key, value);
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let kv = MemoryKv::new();
        assert_eq!(kv.get(b"a").unwrap(), None);
        kv.insert(b"a", b"1".to_vec()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        kv.insert(b"a", b"2".to_vec()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"2".to_vec()));
        kv.remove(b"a").unwrap();
        assert_eq!(kv.get(b"a").unwrap(), None);
        // Removing a missing key is fine.
        kv.remove(b"a").unwrap();
        assert!(kv.is_empty().unwrap());
    }

    #[test]
    fn apply_in_order_and_snapshot_reopen() {
        let kv = MemoryKv::new();
        kv.insert(b"gone", b"x".to_vec()).unwrap();
        kv.apply(vec![
            (b"k".to_vec(), Some(b"first".to_vec())),
            (b"gone".to_vec(), None),
            (b"k".to_vec(), Some(b"second".to_vec())),
            (b"other".to_vec(), Some(b"o".to_vec())),
        ])
        .unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(b"second".to_vec()));
        assert_eq!(kv.get(b"gone").unwrap(), None);
        assert_eq!(kv.len().unwrap(), 2);

        let reopened = MemoryKv::from_entries(kv.snapshot().unwrap());
        assert_eq!(reopened.get(b"k").unwrap(), Some(b"second".to_vec()));
        assert_eq!(reopened.get(b"other").unwrap(), Some(b"o".to_vec()));
        // The copy is independent of the original.
        reopened.remove(b"k").unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(b"second".to_vec()));
    }

    #[test]
    fn debug_does_not_print_values() {
        let kv = MemoryKv::new();
        kv.insert(b"key", b"secret-value".to_vec()).unwrap();
        let printed = format!("{kv:?}");
        assert!(printed.contains("entries: 1"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    fn write_through<B: KvBackend>(backend: B, key: &[u8]) -> Result<(), B::Error> {
        backend.insert(key, b"1".to_vec())?;
        backend.apply(vec![(key.to_vec(), Some(b"2".to_vec()))])
    }

    #[test]
    fn references_and_arcs_are_backends() {
        let kv = Arc::new(MemoryKv::new());
        write_through(Arc::clone(&kv), b"via-arc").unwrap();
        write_through(&*kv, b"via-ref").unwrap();
        assert_eq!(kv.get(b"via-arc").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get(b"via-ref").unwrap(), Some(b"2".to_vec()));
    }
}
