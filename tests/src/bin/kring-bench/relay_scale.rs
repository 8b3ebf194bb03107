//! Relay-side scale figures on a real relay process (`bz`):
//!
//! - storage: bytes the relay stores per notice in communities of different
//!   sizes. The relay is stopped gracefully before and after filing N notices and
//!   its store is read directly (every key and value, the journal's last batches
//!   moved into sled first, summed by key class: `l/` log, `n/` notice records,
//!   `a/` audit, ...); bytes per notice =
//!   (after - before) / N. The store's on-disk size is printed too but is not the
//!   measure (sled allocates and compacts in segments).
//! - memory: the relay's resident set (`VmRSS`) with N devices connected, each
//!   subscribed to its push channel and idle.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kring_client::conn::{Credentials, RelayConnection};
use kring_client::profile::Profile;
use kring_protocol::mls::key_package;
use kring_protocol::wire::{Push, Request, Response};
use kring_tests::{Federation, RelayLauncher};
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::common::{CLEARANCE, LABEL, body, demo_binary, rss_bytes};
use crate::kring_flow::{issue_users, raw_connect};

const RELAY: &str = "bz";

/// Bytes per key class (the key's first byte).
#[derive(Debug, Clone, Default)]
pub struct StoreBytes {
    pub by_class: BTreeMap<char, (u64, u64)>,
    pub disk: u64,
}

impl StoreBytes {
    pub fn total(&self) -> u64 {
        self.by_class.values().map(|(_, b)| b).sum()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Reads every key and value of a stopped relay's store (opened as the relay
/// opens it: what its journal holds beyond sled is moved into sled first).
pub fn measure_store(data_dir: &Path) -> Result<StoreBytes, String> {
    use kring_relay::store::Engine;
    let engine = kring_relay::store::SledEngine::open(data_dir)
        .map_err(|e| format!("opening the relay store {}: {e}", data_dir.display()))?;
    let pairs = engine
        .scan(b"", None, usize::MAX)
        .map_err(|e| format!("reading the relay store {}: {e}", data_dir.display()))?;
    drop(engine);
    let mut out = StoreBytes::default();
    for (k, v) in pairs {
        let class = k.first().map_or('?', |b| char::from(*b));
        let entry = out.by_class.entry(class).or_default();
        entry.0 += 1;
        entry.1 += (k.len() + v.len()) as u64;
    }
    out.disk = dir_bytes(data_dir);
    Ok(out)
}

/// Publishes key packages for `user` over a raw connection (no client state: the
/// private keys are thrown away; these members never join, only their relay
/// records matter).
pub async fn publish_raw(dir: &Path) -> Result<(), String> {
    let profile = Profile::load(dir).map_err(|e| e.to_string())?;
    let creds = Credentials::load(&profile).map_err(|e| e.to_string())?;
    let signer = creds.mls_signer().map_err(|e| e.to_string())?;
    let provider = OpenMlsRustCrypto::default();
    let kp = key_package(&provider, &signer, false).map_err(|e| e.to_string())?;
    let last = key_package(&provider, &signer, true).map_err(|e| e.to_string())?;
    let conn = RelayConnection::connect(
        &creds,
        &profile.relay_addr,
        &profile.relay_id,
        kring_client::conn::Timeouts::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = conn
        .call(&Request::PublishKeyPackages {
            key_packages: vec![kp],
            last_resort: Some(last),
        })
        .await
        .map_err(|e| format!("{}: publishing: {e}", profile.user))?;
    conn.close().await;
    match answer {
        Response::KeyPackagesStored { .. } => Ok(()),
        other => Err(format!("PublishKeyPackages answered {other:?}")),
    }
}

/// Storage figures of one community size.
#[derive(Debug)]
pub struct Storage {
    /// Members the community reached.
    pub members: usize,
    /// Members it should have had.
    pub wanted: usize,
    /// Why it stopped growing, if it did.
    pub add_failure: Option<String>,
    pub notices: usize,
    pub before: StoreBytes,
    pub after: StoreBytes,
}

impl Storage {
    pub fn per_notice(&self) -> f64 {
        (self.after.total() as f64 - self.before.total() as f64) / self.notices as f64
    }

    /// Bytes per notice of one key class.
    pub fn class_per_notice(&self, c: char) -> f64 {
        let a = self.after.by_class.get(&c).map_or(0, |x| x.1) as f64;
        let b = self.before.by_class.get(&c).map_or(0, |x| x.1) as f64;
        (a - b) / self.notices as f64
    }
}

/// Runs `f` on every item, with at most `parallel` at a time.
pub async fn bounded<F, Fut>(
    items: Vec<std::path::PathBuf>,
    parallel: usize,
    f: F,
) -> Result<(), String>
where
    F: Fn(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for item in items {
        if set.len() >= parallel
            && let Some(r) = set.join_next().await
        {
            r.map_err(|e| e.to_string())??;
        }
        set.spawn(f(item));
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A community of `members` (the owner and `members - 1` others, all at bz), then
/// `notices` notices filed by the owner.
pub async fn storage(members: usize, notices: usize) -> Result<Storage, String> {
    let mut fed = Federation::create(RelayLauncher::demo_binary(demo_binary()?))
        .map_err(|e| e.to_string())?;
    let owner = format!("owner@{RELAY}");
    fed.issue_user(&owner, CLEARANCE, &[])
        .map_err(|e| e.to_string())?;
    let others: Vec<String> = (1..members).map(|i| format!("m{i}@{RELAY}")).collect();
    issue_users(&fed, &others)?;
    fed.start(RELAY).map_err(|e| e.to_string())?;
    let mut oc = fed.client(&owner).map_err(|e| e.to_string())?;
    oc.publish_key_packages(3)
        .await
        .map_err(|e| e.to_string())?;
    let dirs: Vec<_> = others.iter().map(|u| fed.user_dir(u)).collect();
    bounded(dirs, 16, |d| async move { publish_raw(&d).await }).await?;
    let created = oc
        .create_community("store", CLEARANCE)
        .await
        .map_err(|e| format!("creating the community: {e}"))?;
    // Adds in batches of 100 (the protocol's limit); if an add fails, the
    // community stays at the size reached and the failure is reported.
    let mut size = 1;
    let mut add_failure = None;
    for chunk in others.chunks(kring_protocol::mls::MAX_BATCH_MEMBERS) {
        match oc.add_members(&created.community, chunk).await {
            Ok(_) => size += chunk.len(),
            Err(e) => {
                add_failure = Some(format!(
                    "adding members {}..{} to a {size}-member community failed: {e}",
                    size,
                    size + chunk.len() - 1
                ));
                break;
            }
        }
    }
    oc.disconnect().await;
    fed.stop(RELAY).map_err(|e| e.to_string())?;
    let before = measure_store(&fed.data_dir(RELAY))?;
    fed.start(RELAY).map_err(|e| e.to_string())?;
    let body = body();
    for i in 0..notices {
        oc.file_notice(kring_tests::signal(
            &created.community,
            LABEL,
            &format!("store {i}"),
            &body,
        ))
        .await
        .map_err(|e| format!("filing: {e}"))?;
    }
    oc.disconnect().await;
    fed.stop(RELAY).map_err(|e| e.to_string())?;
    let after = measure_store(&fed.data_dir(RELAY))?;
    Ok(Storage {
        members: size,
        wanted: members,
        add_failure,
        notices,
        before,
        after,
    })
}

/// Memory figures.
#[derive(Debug)]
pub struct Memory {
    pub devices: usize,
    pub idle_rss: u64,
    pub connected_rss: u64,
    pub connect_time: Duration,
}

/// The relay's RSS before and with `devices` subscribed idle devices.
pub async fn memory(devices: usize) -> Result<Memory, String> {
    let mut fed = Federation::create(RelayLauncher::demo_binary(demo_binary()?))
        .map_err(|e| e.to_string())?;
    let users: Vec<String> = (0..devices).map(|i| format!("d{i}@{RELAY}")).collect();
    issue_users(&fed, &users)?;
    fed.start(RELAY).map_err(|e| e.to_string())?;
    let pid = fed.relay_pid(RELAY).ok_or("relay not running")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_bytes(pid)?;
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut holders = tokio::task::JoinSet::new();
    let mut in_flight = 0usize;
    let mut done = 0usize;
    for u in &users {
        if in_flight >= 32 {
            match rx.recv().await {
                Some(Ok(())) => {
                    in_flight -= 1;
                    done += 1;
                }
                Some(Err(e)) => return Err(e),
                None => return Err("device tasks vanished".into()),
            }
        }
        let dir = fed.user_dir(u);
        let tx = tx.clone();
        in_flight += 1;
        holders.spawn(async move {
            let setup = async {
                let conn = raw_connect(&dir).await?;
                let mut sub = conn.subscribe().await.map_err(|e| e.to_string())?;
                loop {
                    match sub.next().await.map_err(|e| e.to_string())? {
                        Some(Push::CaughtUp) => break,
                        Some(_) => {}
                        None => return Err("push channel closed".to_string()),
                    }
                }
                Ok::<_, String>((conn, sub))
            }
            .await;
            match setup {
                Ok(held) => {
                    let _ = tx.send(Ok(()));
                    // Stay connected and idle until aborted.
                    std::future::pending::<()>().await;
                    drop(held);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    }
    while done < users.len() {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Ok(()))) => done += 1,
            Ok(Some(Err(e))) => return Err(e),
            _ => return Err(format!("only {done} of {} devices connected", users.len())),
        }
    }
    let connect_time = start.elapsed();
    // Let the relay settle (keep-alives, task cleanup), then read its RSS.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected_rss = rss_bytes(pid)?;
    holders.abort_all();
    while holders.join_next().await.is_some() {}
    drop(fed);
    Ok(Memory {
        devices,
        idle_rss,
        connected_rss,
        connect_time,
    })
}
