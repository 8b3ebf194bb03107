//! [`KringProvider`]: the openmls provider clients and relays use.

use std::fmt;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;

use super::backend::KvBackend;
use super::storage::KvStorage;

/// An [`OpenMlsProvider`] with `RustCrypto` for cryptography and randomness and
/// a [`KvStorage`] over backend `B` for state.
///
/// Building a provider over a backend that already holds MLS state (for
/// example after a restart) gives access to the groups stored in it through
/// `MlsGroup::load`.
pub struct KringProvider<B> {
    crypto: RustCrypto,
    storage: KvStorage<B>,
}

impl<B: KvBackend> KringProvider<B> {
    /// Creates a provider keeping MLS state in `backend`, with a fresh RustCrypto
    /// random number generator seeded from the operating system.
    pub fn new(backend: B) -> Self {
        Self::with_storage(KvStorage::new(backend))
    }

    /// Creates a provider around an existing storage provider.
    pub fn with_storage(storage: KvStorage<B>) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }

    /// Returns the key-value backend.
    pub fn backend(&self) -> &B {
        self.storage.backend()
    }

    /// Returns the key-value backend, consuming the provider.
    pub fn into_backend(self) -> B {
        self.storage.into_backend()
    }
}

impl<B> fmt::Debug for KringProvider<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KringProvider")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl<B: KvBackend> OpenMlsProvider for KringProvider<B> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = KvStorage<B>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
