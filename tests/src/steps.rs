//! Steps the multi-relay tests (and the demo and bench) share. They are test code: a
//! step that cannot complete panics with a message saying what did not happen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kring_client::{Client, ClientError, NoticeDraft, SyncEvent};

use crate::Federation;

/// How long a step waits for something to arrive across relays.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of a step.
const POLL: Duration = Duration::from_millis(100);

/// A signal with a body derived from its title.
pub fn draft(community: &str, label: &str, title: &str) -> NoticeDraft {
    crate::signal(community, label, title, &format!("body of {title}"))
}

/// A client for `user` with three key packages published.
pub async fn ready(fed: &Federation, user: &str) -> Client {
    let mut c = fed.client(user).unwrap();
    c.publish_key_packages(3).await.unwrap();
    c
}

/// Titles of the notices the device holds in `community`, in order.
pub fn titles(c: &Client, community: &str) -> Vec<String> {
    c.notices(Some(community))
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect()
}

/// Syncs until the device holds exactly the notices titled `want`, in that order.
pub async fn sync_until(c: &mut Client, community: &str, want: &[&str]) {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        c.sync().await.unwrap();
        let got = titles(c, community);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: have {got:?}, want {want:?}",
            c.user()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Syncs until the device has joined `community` (its local group exists and the
/// relay lists the community).
pub async fn join(c: &mut Client, community: &str) {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        c.sync().await.unwrap();
        if c.notices(Some(community)).is_ok()
            && c.list_communities()
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == community)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never joined {community}",
            c.user()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What a background `watch` ended with: the client, when, and why.
pub type WatchEnd = (Client, Instant, Result<(), ClientError>);

/// Runs `watch` on `c` in a task and returns once the device is caught up (online);
/// the task ends when the watch does (e.g. the device is revoked).
///
/// # Errors
/// If the device is not online within the step deadline.
pub async fn watch_online(mut c: Client) -> Result<tokio::task::JoinHandle<WatchEnd>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let result = c
            .watch(|e| {
                if *e == SyncEvent::CaughtUp
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            })
            .await;
        (c, Instant::now(), result)
    });
    match tokio::time::timeout(STEP_DEADLINE, rx).await {
        Ok(Ok(())) => Ok(task),
        _ => {
            task.abort();
            Err("the device did not come online".into())
        }
    }
}
