//! An engine in memory: an ordered map behind a lock, nothing on disk. For unit
//! tests of the relay core (every decision in microseconds, no files).

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::{Batch, Engine, Pair};
use crate::error::RelayError;

/// An ordered key-value engine held in memory; `flush` has nothing to do.
#[derive(Debug, Default)]
pub struct MemEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemEngine {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        Ok(self.read().get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        let map = self.read();
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        Ok(map
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError> {
        let map = self.read();
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn apply(&self, batch: Batch) -> Result<(), RelayError> {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), RelayError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_follow_prefix_after_and_limit() {
        let e = MemEngine::new();
        let mut b = Batch::default();
        for k in ["a/1", "a/2", "a/3", "b/1"] {
            b.put(k.as_bytes().to_vec(), k.as_bytes().to_vec());
        }
        b.delete(b"a/2".to_vec());
        e.apply(b).unwrap();
        let keys = |pairs: Vec<Pair>| -> Vec<String> {
            pairs
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(e.scan(b"a/", None, 10).unwrap()), ["a/1", "a/3"]);
        assert_eq!(keys(e.scan(b"a/", Some(b"a/1"), 10).unwrap()), ["a/3"]);
        assert_eq!(keys(e.scan(b"a/", None, 1).unwrap()), ["a/1"]);
        assert_eq!(e.last(b"a/").unwrap().unwrap().0, b"a/3");
        assert!(e.last(b"c/").unwrap().is_none());
        assert_eq!(e.get(b"b/1").unwrap().unwrap(), b"b/1");
    }
}
