//! The sealed sled tree under the store, and the openmls backend over its `m/` part
//! ([`MlsKv`]) with the write buffer a transaction collects.

use super::*;

pub(super) type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The openmls key-value backend of the client: the `m/` part of the store's tree,
/// with optional write buffering (see [`Store::begin`]). Cheap to clone; clones share
/// the buffer.
#[derive(Clone)]
pub struct MlsKv {
    pub(super) shared: Arc<Shared>,
}

/// The database handle (opened on demand, released on request) and the MLS write
/// buffer, shared by the [`Store`] and its [`MlsKv`].
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) key: Arc<DataKey>,
    pub(super) tree: Mutex<Option<sled::Tree>>,
    pub(super) overlay: Mutex<Option<Overlay>>,
    /// While set, commits are applied but not flushed; [`Store::flush`] flushes.
    pub(super) defer_flush: std::sync::atomic::AtomicBool,
    /// Counts what may change MLS state under a loaded group: writes of `m/` keys
    /// (buffered or not), dropped buffers and releases of the database (another
    /// process may write meanwhile). See [`Store::mls_writes`].
    pub(super) mls_writes: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Notes that MLS state may have changed.
    pub(super) fn mls_changed(&self) {
        self.mls_writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The open tree, opening the database if it was released.
    pub(super) fn tree(&self) -> Result<SealedTree, StoreError> {
        let mut guard = self.tree.lock().map_err(|_| StoreError::Poisoned)?;
        let tree = match guard.as_ref() {
            Some(tree) => tree.clone(),
            None => {
                let tree = open_tree(&self.dir)?;
                *guard = Some(tree.clone());
                tree
            }
        };
        Ok(SealedTree {
            tree,
            key: Arc::clone(&self.key),
        })
    }
}

/// The sled tree seen through the data key: values are sealed on the way in and
/// opened on the way out (the database key is their associated data). The only
/// way the store reaches the database.
pub(super) struct SealedTree {
    pub(super) tree: sled::Tree,
    pub(super) key: Arc<DataKey>,
}

impl SealedTree {
    pub(super) fn open_value(&self, key: &[u8], sealed: &[u8]) -> Result<sled::IVec, StoreError> {
        Ok(self.key.open(key, sealed)?.into())
    }

    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>, StoreError> {
        let key = key.as_ref();
        self.tree
            .get(key)?
            .map(|v| self.open_value(key, &v))
            .transpose()
    }

    pub(super) fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    pub(super) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        let key = key.as_ref();
        self.tree.insert(key, self.key.seal(key, value.as_ref())?)?;
        Ok(())
    }

    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Stores `value` unless `key` holds one; returns whether it was stored.
    pub(super) fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let sealed = self.key.seal(key, value)?;
        Ok(self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(sealed))?
            .is_ok())
    }

    pub(super) fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let v = self.open_value(&k, &v)?;
            Ok((k, v))
        })
    }

    /// Applies the writes (`None`: remove) as one atomic sled batch.
    pub(super) fn apply(
        &self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => {
                    let sealed = self.key.seal(&k, &v)?;
                    b.insert(k, sealed);
                }
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Writes the check value into an empty database, or checks it in a non-empty
    /// one.
    pub(super) fn check(&self, dir: &Path) -> Result<(), StoreError> {
        match self.tree.get(CHECK_KEY)? {
            Some(sealed) => match self.key.open(CHECK_KEY, &sealed) {
                Ok(v) if v == CHECK_VALUE => Ok(()),
                _ => Err(StoreError::WrongKey {
                    path: dir.display().to_string(),
                }),
            },
            None if self.tree.is_empty() => {
                self.insert(CHECK_KEY, CHECK_VALUE)?;
                self.flush()
            }
            None => Err(StoreError::NotSealed {
                path: dir.display().to_string(),
            }),
        }
    }
}

/// Opens the database in `dir`, waiting up to [`LOCK_WAIT`] for another kring
/// process to release it.
pub(super) fn open_tree(dir: &Path) -> Result<sled::Tree, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    restrict_permissions(dir);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(open_err(e.to_string())),
        }
    };
    db.open_tree("kring").map_err(|e| open_err(e.to_string()))
}

impl std::fmt::Debug for MlsKv {
    // Values hold private keys: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsKv").finish_non_exhaustive()
    }
}

pub(super) fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

impl MlsKv {
    pub(super) fn key(key: &[u8]) -> Result<Vec<u8>, StoreError> {
        if key.len() > MAX_MLS_KEY {
            return Err(StoreError::KeyTooLong(key.len()));
        }
        Ok(prefixed(MLS, key))
    }

    pub(super) fn with_overlay<R>(
        &self,
        f: impl FnOnce(&mut Option<Overlay>) -> R,
    ) -> Result<R, StoreError> {
        let mut guard = self
            .shared
            .overlay
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut guard))
    }
}

impl KvBackend for MlsKv {
    type Error = StoreError;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = Self::key(key)?;
        let buffered = self.with_overlay(|o| o.as_ref().and_then(|o| o.get(&key).cloned()))?;
        if let Some(value) = buffered {
            return Ok(value);
        }
        Ok(self.shared.tree()?.get(&key)?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let key = Self::key(key)?;
        self.shared.mls_changed();
        let value = self.with_overlay(|o| match o {
            Some(o) => {
                o.insert(key.clone(), Some(value));
                None
            }
            None => Some(value),
        })?;
        if let Some(value) = value {
            self.shared.tree()?.insert(key, value)?;
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let key = Self::key(key)?;
        self.shared.mls_changed();
        let buffered = self.with_overlay(|o| match o {
            Some(o) => {
                o.insert(key.clone(), None);
                true
            }
            None => false,
        })?;
        if !buffered {
            self.shared.tree()?.remove(key)?;
        }
        Ok(())
    }

    fn apply(&self, batch: KvBatch) -> Result<(), StoreError> {
        self.shared.mls_changed();
        let mut keyed = Vec::with_capacity(batch.len());
        for (k, v) in batch {
            keyed.push((Self::key(&k)?, v));
        }
        let direct = self.with_overlay(|o| match o {
            Some(o) => {
                o.extend(keyed.drain(..));
                false
            }
            None => true,
        })?;
        if direct {
            self.shared.tree()?.apply(keyed)?;
        }
        Ok(())
    }
}
