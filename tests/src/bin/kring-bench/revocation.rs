//! `revocation`: how fast a revocation takes effect across the federation (the
//! "within 1 second").
//!
//! Four relays; community `cut@bz` (hub bz) with the bench users `lidN@nctv` and the
//! admin `liaison@bz`, whose device runs `watch` (its client commits the hub's removal
//! proposals). Each round: `lidN@nctv`'s device is connected to nctv and watching;
//! `admin@nctv` revokes it. Measured from the moment the org-admin's device sends
//! the revocation (the relay cuts the device off before it answers): (a) the device's connection is closed by its relay; (b) the revoked
//! user is no longer a member at the hub: hub bz received the statement over
//! federation, proposed the removal, and liaison@bz's client committed it.

use std::time::{Duration, Instant};

use kring_client::SyncEvent;
use kring_tests::{Federation, RelayLauncher};

use crate::common::{CLEARANCE, demo_binary};

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct RevocationTimes {
    /// Revocation sent -> the device's connection closed.
    pub cut_off: Vec<Duration>,
    /// Revocation sent -> removal committed at the hub (another relay).
    pub removed_at_hub: Vec<Duration>,
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Runs `rounds` revocations.
pub async fn run(rounds: usize) -> Result<RevocationTimes, String> {
    let mut fed = Federation::create(RelayLauncher::demo_binary(demo_binary()?)).map_err(e)?;
    let users: Vec<String> = (0..rounds).map(|i| format!("lid{i}@nctv")).collect();
    for u in &users {
        fed.issue_user(u, CLEARANCE, &[]).map_err(e)?;
    }
    fed.start_all().map_err(e)?;
    let mut hub_admin = fed.client("liaison@bz").map_err(e)?;
    hub_admin.publish_key_packages(2).await.map_err(e)?;
    hub_admin
        .create_community("cut", CLEARANCE)
        .await
        .map_err(e)?;
    let mut devices = Vec::new();
    for u in &users {
        let mut c = fed.client(u).map_err(e)?;
        c.publish_key_packages(2).await.map_err(e)?;
        devices.push(c);
    }
    hub_admin.add_members("cut@bz", &users).await.map_err(e)?;
    for c in &mut devices {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.notices(Some("cut@bz")).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not join cut@bz", c.user()));
            }
            c.sync().await.map_err(e)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // liaison@bz's device watches; it reports each removal it commits.
    let (removed_tx, mut removed_rx) = tokio::sync::mpsc::unbounded_channel();
    let admin_task = tokio::spawn(async move {
        let _ = hub_admin
            .watch(|ev| {
                if let SyncEvent::RemovalCommitted { .. } = ev {
                    let _ = removed_tx.send(Instant::now());
                }
            })
            .await;
    });
    let mut org_admin = fed.client("admin@nctv").map_err(e)?;
    let mut times = RevocationTimes {
        cut_off: Vec::new(),
        removed_at_hub: Vec::new(),
    };
    for (u, device) in users.iter().zip(devices) {
        let watch = kring_tests::steps::watch_online(device).await?;
        let sent = Instant::now();
        org_admin
            .revoke(u, "benchmark")
            .await
            .map_err(|x| format!("revoking {u}: {x}"))?;
        let (_, closed, _) = tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .map_err(|_| format!("{u} was not cut off within 10 s"))?
            .map_err(e)?;
        times.cut_off.push(closed.saturating_duration_since(sent));
        let removed = tokio::time::timeout(Duration::from_secs(20), removed_rx.recv())
            .await
            .map_err(|_| format!("{u} was not removed at the hub within 20 s"))?
            .ok_or("liaison@bz's watch ended")?;
        times
            .removed_at_hub
            .push(removed.saturating_duration_since(sent));
    }
    admin_task.abort();
    Ok(times)
}
