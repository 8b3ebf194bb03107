//! A device's data at rest: what notices leave on the disk of the devices that
//! filed and received them (nothing readable), a wrong passphrase (refused, nothing
//! touched), and a revoked device deleting its archive when its relay says so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kring_client::cli::Out;
use kring_tests::steps::{ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Every file under `dir`, recursively, with its raw bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The files among `files` that contain `needle`.
fn holding(files: &BTreeMap<PathBuf, Vec<u8>>, needle: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(p, _)| p.clone())
        .collect()
}

/// Runs the `kring` command line in this process; its exit code (or error) and
/// stdout.
async fn kring(args: &[&str]) -> (Result<i32, kring_client::ClientError>, String) {
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let shared = Shared::default();
    let result = kring_client::cli::run_args(
        std::iter::once("kring").chain(args.iter().copied()),
        &mut Out::new(Box::new(shared.clone())),
    )
    .await;
    let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
    (result, text)
}

/// Two devices file and receive notices (titles, bodies, STIX); afterwards no byte
/// sequence of any of them is anywhere in either profile directory, state database
/// included — while both devices still read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notice_content_is_on_the_disk_in_the_clear() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let mut filer = ready(&fed, "liaison@bz").await;
    let mut reader = ready(&fed, "admin@bz").await;
    filer
        .create_community("embassy", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    filer
        .add_members("embassy", &["admin@bz".to_string()])
        .await
        .unwrap();
    reader.sync().await.unwrap();

    // Distinctive strings that occur nowhere else.
    let secrets: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                format!("Title-Quokka-Ferrule-{i}-7731"),
                format!("Body-Pumice-Lanyard-{i}-2294 more words of the report"),
                format!("indicator-Tamarind-{i}-5108.example"),
            )
        })
        .collect();
    let mut filed_titles = Vec::new();
    for (title, body, indicator) in &secrets {
        let mut draft = kring_tests::signal("embassy@bz", "NL:STG-CONFIDENTIEEL", title, body);
        draft.stix = Some(vec![serde_json::json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
            "created": "2025-01-01T00:00:00.000Z",
            "modified": "2025-01-01T00:00:00.000Z",
            "pattern": format!("[domain-name:value = '{indicator}']"),
            "pattern_type": "stix",
            "valid_from": "2025-01-01T00:00:00Z"
        })]);
        filer.file_notice(draft).await.unwrap();
        filed_titles.push(title.as_str());
    }
    sync_until(&mut reader, "embassy@bz", &filed_titles).await;
    assert_eq!(titles(&filer, "embassy@bz"), filed_titles);
    let received = reader.notices(Some("embassy@bz")).unwrap();
    assert!(received[0].body.starts_with("Body-Pumice-Lanyard-0"));
    assert!(received[0].stix.as_ref().is_some_and(|s| {
        serde_json::Value::from(s.clone())
            .to_string()
            .contains("indicator-Tamarind-0-5108")
    }));

    // Everything on disk: the devices closed (sled flushed and released).
    filer.disconnect().await;
    reader.disconnect().await;
    drop(filer);
    drop(reader);
    let users = fed.dir().join("users");
    let on_disk = files(&users);
    assert!(
        on_disk
            .keys()
            .any(|p| p.ends_with("liaison@bz/state/archive.key"))
            && on_disk.keys().any(|p| p.ends_with("admin@bz/state/db")),
        "the scan covers the state databases: {:?}",
        on_disk.keys().collect::<Vec<_>>()
    );
    // The scan finds what is there.
    let mut probe = on_disk.clone();
    probe.insert(
        PathBuf::from("probe"),
        b"..Title-Quokka-Ferrule-0-7731..".to_vec(),
    );
    assert_eq!(holding(&probe, &secrets[0].0), vec![PathBuf::from("probe")]);
    for (title, body, indicator) in &secrets {
        for needle in [title.as_str(), &body[..24], indicator.as_str()] {
            assert_eq!(holding(&on_disk, needle), Vec::<PathBuf>::new(), "{needle}");
        }
    }

    // And the devices still read them (after a restart of the process's view).
    let reader = fed.client("admin@bz").unwrap();
    assert_eq!(titles(&reader, "embassy@bz"), filed_titles);
}

/// A wrong passphrase: exit 4, a message that says so, and not one byte of the
/// profile changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_is_refused_and_touches_nothing() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let mut device = ready(&fed, "liaison@bz").await;
    device
        .create_community("c", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    device.disconnect().await;
    drop(device);
    let dir = fed.user_dir("liaison@bz");
    let profile = dir.to_str().unwrap();
    let passphrase = dir.join(kring_certs_dev::PASSPHRASE_FILE);
    let right = std::fs::read(&passphrase).unwrap();

    std::fs::write(&passphrase, "not the passphrase\n").unwrap();
    let before = files(&dir);
    for args in [
        &["--profile", profile, "community", "list"][..],
        &["--profile", profile, "notice", "list"][..],
        &["--profile", profile, "keys", "publish"][..],
    ] {
        let (result, out) = kring(args).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{args:?}: {err}");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(files(&dir) == before, "{args:?} changed the profile");
    }

    std::fs::write(&passphrase, &right).unwrap();
    let (result, out) = kring(&["--profile", profile, "community", "list"]).await;
    assert_eq!(result.unwrap(), 0);
    assert!(out.contains("c@bz"), "{out}");
}

/// The org-admin revokes a user; that user's device, told so by its relay, deletes
/// its archive and MLS state and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_deletes_its_archive() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let mut victim = ready(&fed, "liaison@bz").await;
    victim
        .create_community("c", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    victim.disconnect().await;
    drop(victim);
    let dir = fed.user_dir("liaison@bz");
    let state = dir.join("state");
    assert!(state.join("archive.key").is_file());

    // Not revoked: a failing command leaves the archive alone.
    let profile = dir.to_str().unwrap();
    let (result, _) = kring(&["--profile", profile, "community", "members", "nope@bz"]).await;
    assert!(result.is_err());
    assert!(state.is_dir());

    let mut admin = fed.client("admin@bz").unwrap();
    admin.revoke("liaison@bz", "laptop stolen").await.unwrap();

    let (result, _) = kring(&["--profile", profile, "keys", "publish"]).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    let text = err.to_string();
    assert!(text.contains("revoked"), "{text}");
    assert!(text.contains("local archive and MLS state"), "{text}");
    assert!(text.contains("have been deleted"), "{text}");
    assert!(!state.exists(), "the state directory is gone");
    // The profile itself stays (the certificate is useless now anyway).
    assert!(dir.join("profile.toml").is_file());
}
