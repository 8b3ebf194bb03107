//! Device keys on a PKCS#11 token (SoftHSM2): users whose keys live only in the
//! token file and read notices end to end (TLS and MLS signatures both made by the
//! token), nothing of the notices on their disks, and a wrong PIN refused with
//! exit 4 and nothing touched.
//!
//! Needs SoftHSM2 (`apt-get install -y softhsm2`). Without it the test says so and
//! passes, unless `KRING_REQUIRE_SOFTHSM` is set (as the test command sets it).
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) when it loads, so the test
//! runs its body in a child process of this test binary with that set to a
//! configuration of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kring_client::cli::Out;
use kring_tests::steps::{ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CHILD: &str = "KRING_PKCS11_TEST_CHILD";

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

#[test]
fn token_keys_sign_tls_and_mls_and_a_wrong_pin_is_refused() {
    if std::env::var_os(CHILD).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(token_users_read_notices_end_to_end());
        return;
    }
    if !Path::new(MODULE).is_file() {
        assert!(
            std::env::var_os("KRING_REQUIRE_SOFTHSM").is_none(),
            "KRING_REQUIRE_SOFTHSM is set but {MODULE} is missing: apt-get install -y softhsm2"
        );
        eprintln!("SKIPPED: {MODULE} is missing (apt-get install -y softhsm2)");
        return;
    }
    // A SoftHSM2 configuration of this run's own, then the body in a child.
    let tmp = tempfile::tempdir().unwrap();
    let conf = kring_certs_dev::token::write_softhsm_conf(tmp.path()).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "token_keys_sign_tls_and_mls_and_a_wrong_pin_is_refused",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert!(status.success(), "the token test failed: {status}");
}

async fn token_users_read_notices_end_to_end() {
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    kring_certs_dev::token::move_keys_into_tokens(fed.dir(), Path::new(MODULE)).unwrap();
    for user in ["liaison@bz", "admin@bz", "liaison@nctv"] {
        let dir = fed.user_dir(user);
        assert!(!dir.join("user.key").exists(), "{user}: no key file");
        let profile = std::fs::read_to_string(dir.join("profile.toml")).unwrap();
        assert!(profile.contains("key = \"pkcs11:token="), "{profile}");
    }
    fed.start("bz").unwrap();

    // Both devices connect (TLS client signature by the token) and use MLS
    // (signatures by the token).
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
    let secrets: Vec<(String, String)> = (0..2)
        .map(|i| {
            (
                format!("Title-Smartcard-Osprey-{i}-4417"),
                format!("Body-Hardware-Lichen-{i}-9023 and the rest of the report"),
            )
        })
        .collect();
    let mut filed = Vec::new();
    for (title, body) in &secrets {
        filer
            .file_notice(kring_tests::signal(
                "embassy@bz",
                "NL:STG-CONFIDENTIEEL",
                title,
                body,
            ))
            .await
            .unwrap();
        filed.push(title.as_str());
    }
    sync_until(&mut reader, "embassy@bz", &filed).await;
    assert_eq!(titles(&filer, "embassy@bz"), filed);
    let received = reader.notices(Some("embassy@bz")).unwrap();
    assert!(received[0].body.starts_with("Body-Hardware-Lichen-0"));

    // Nothing of the notices on disk.
    filer.disconnect().await;
    reader.disconnect().await;
    drop(filer);
    drop(reader);
    let on_disk = files(&fed.dir().join("users"));
    assert!(
        on_disk.keys().any(|p| p.ends_with("admin@bz/state/db")),
        "the scan covers the state databases"
    );
    for (title, body) in &secrets {
        for needle in [title.as_str(), &body[..24]] {
            assert_eq!(holding(&on_disk, needle), Vec::<PathBuf>::new(), "{needle}");
        }
    }

    // A wrong PIN: exit 4, says so, changes nothing.
    let dir = fed.user_dir("liaison@nctv");
    let profile = dir.to_str().unwrap();
    std::fs::write(dir.join("user.pin"), "00000000\n").unwrap();
    let before = files(&dir);
    for args in [
        &["--profile", profile, "community", "list"][..],
        &["--profile", profile, "keys", "publish"][..],
    ] {
        let (result, out) = kring(args).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{args:?}: {err}");
        assert!(err.to_string().contains("wrong PIN"), "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(files(&dir) == before, "{args:?} changed the profile");
    }

    // A missing token: exit 4, says so, changes nothing.
    let dir = fed.user_dir("admin@nctv");
    let profile_toml = dir.join("profile.toml");
    let text = std::fs::read_to_string(&profile_toml).unwrap();
    std::fs::write(
        &profile_toml,
        text.replace("token=admin@nctv;", "token=card-not-inserted;"),
    )
    .unwrap();
    let before = files(&dir);
    let (result, out) = kring(&["--profile", dir.to_str().unwrap(), "community", "list"]).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("not present"), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(files(&dir) == before, "a missing token changed the profile");
}
