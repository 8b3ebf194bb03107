//! Attachments across four relays: sealed on the filer's device at an embassy,
//! uploaded to its relay, fetched through the hub by a member relay of another
//! organisation on request, checked on arrival; forwarded with the notice into a
//! community hubbed elsewhere; never handed to a relay or person not entitled to
//! the notice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use kring_client::{Client, ClientError, Ordering};
use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Deterministic bytes that do not compress or repeat in chunks.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn notice_titled(c: &Client, community: &str, title: &str) -> kring_client::Notice {
    c.notices(Some(community))
        .unwrap()
        .into_iter()
        .find(|n| n.title == title)
        .unwrap_or_else(|| panic!("{} has no {title} in {community}", c.user()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_travel_sealed_and_reach_entitled_members_only() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let files = tempfile::tempdir().unwrap();
    let photo = files.path().join("foto.jpg");
    let report = files.path().join("verslag.txt");
    let photo_bytes = bytes(2 * 1024 * 1024 + 12_345, 1);
    std::fs::write(&photo, &photo_bytes).unwrap();
    std::fs::write(&report, b"Demonstratie voor de ambassade.\n").unwrap();

    let mut liaison = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut post = ready(&fed, "analist@post-a").await;
    let mut aivd = ready(&fed, "analist@aivd").await;
    liaison
        .create_community("bijlagen", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    liaison
        .add_members("bijlagen@bz", &["liaison@nctv", "analist@post-a"])
        .await
        .unwrap();
    join(&mut nctv, "bijlagen@bz").await;
    join(&mut post, "bijlagen@bz").await;

    // Filed at the embassy with two files: sealed there, uploaded to post-a.
    let mut signal = draft("bijlagen@bz", "NL:STG-CONFIDENTIEEL;TLP=GREEN", "Foto");
    signal.attachments = vec![photo.clone(), report.clone()];
    let filed = post.file_notice(signal).await.unwrap();
    assert!(
        matches!(filed.ordering, Ordering::Ordered { .. }),
        "{:?}",
        filed.ordering
    );
    assert_eq!(filed.notice.attachments.len(), 2);

    // The hub's liaison forwards it, with one more file, into a community hubbed
    // at nctv, before anyone fetched the files: bz fetches them from post-a to
    // hold them for the forward. aivd's analyst, who is not in the original
    // community, saves all three: aivd fetches them through nctv, which fetches
    // them from bz.
    nctv.create_community("keten", "NL:STG-GEHEIM")
        .await
        .unwrap();
    nctv.add_members("keten@nctv", &["analist@aivd", "liaison@bz"])
        .await
        .unwrap();
    join(&mut aivd, "keten@nctv").await;
    join(&mut liaison, "keten@nctv").await;
    sync_until(&mut liaison, "bijlagen@bz", &["Foto"]).await;
    let original = notice_titled(&liaison, "bijlagen@bz", "Foto");
    let note = files.path().join("duiding.txt");
    std::fs::write(&note, b"Duiding door BZ.\n").unwrap();
    liaison
        .forward_with(
            &original.id.to_string(),
            "keten@nctv",
            None,
            Some("Ter informatie"),
            vec![note.clone()],
        )
        .await
        .unwrap();
    sync_until(&mut aivd, "keten@nctv", &["Foto"]).await;
    let fwd = notice_titled(&aivd, "keten@nctv", "Foto");
    assert_eq!(fwd.attachments.len(), 3);
    let out_aivd = tempfile::tempdir().unwrap();
    aivd.save_attachments(&fwd.id.to_string(), out_aivd.path(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out_aivd.path().join("foto.jpg")).unwrap(),
        photo_bytes
    );
    assert_eq!(
        std::fs::read(out_aivd.path().join("duiding.txt")).unwrap(),
        b"Duiding door BZ.\n"
    );

    // nctv's liaison reads the original and saves both files: nctv's relay fetches
    // them through the hub (bz).
    sync_until(&mut nctv, "bijlagen@bz", &["Foto"]).await;
    let got = notice_titled(&nctv, "bijlagen@bz", "Foto");
    let json = got.to_json_line();
    assert!(
        json.contains(&format!(
            "\"attachments\":[{{\"name\":\"foto.jpg\",\"size\":{},\"sha256\":\"",
            photo_bytes.len()
        )),
        "{json}"
    );
    assert!(!json.contains("\"key\""), "{json}");
    let out = tempfile::tempdir().unwrap();
    let mut transferred = 0;
    let saved = nctv
        .save_attachments(&got.id.to_string(), out.path(), &mut |_| transferred += 1)
        .await
        .unwrap();
    assert!(
        transferred >= 3,
        "progress was reported {transferred} times"
    );
    assert_eq!(saved.len(), 2);
    assert_eq!(
        std::fs::read(out.path().join("foto.jpg")).unwrap(),
        photo_bytes
    );
    assert_eq!(
        std::fs::read(out.path().join("verslag.txt")).unwrap(),
        std::fs::read(&report).unwrap()
    );
    // Nothing left behind but the files; saving again never overwrites.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 2);
    let again = nctv
        .save_attachments(&got.id.to_string(), out.path(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");

    // aivd's analyst cannot save them from the original community.
    let err = aivd
        .save_attachments(&got.id.to_string(), out_aivd.path(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");

    // Too much: refused on the device before anything is sealed or sent.
    let big = files.path().join("groot.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(kring_protocol::attachment::MAX_ATTACHMENT_BYTES + 1)
        .unwrap();
    let mut huge = draft("bijlagen@bz", "NL:STG-CONFIDENTIEEL", "Te groot");
    huge.attachments = vec![big];
    let err = post.file_notice(huge).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("50 MiB"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_a_relay_that_goes_away_and_bad_bytes_are_never_saved() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("opname.bin");
    let content = bytes(3 * 1024 * 1024 + 5, 7);
    std::fs::write(&file, &content).unwrap();
    let mut liaison = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    liaison
        .create_community("onderweg", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    liaison
        .add_members("onderweg@bz", &["analist@post-a"])
        .await
        .unwrap();
    join(&mut post, "onderweg@bz").await;

    // The embassy's relay is down when the analyst files: the device keeps trying
    // and the upload goes through once the relay is back.
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    let filing = tokio::spawn(async move {
        let mut signal = draft("onderweg@bz", "NL:STG-CONFIDENTIEEL", "Opname");
        signal.attachments = vec![file];
        let filed = post.file_notice(signal).await;
        (post, filed)
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    fed.start("post-a").unwrap();
    let (_post, filed) = filing.await.unwrap();
    let filed = filed.unwrap();
    assert_eq!(filed.notice.attachments[0].size, content.len() as u64);

    // A download whose part file holds bytes that are not the blob's: the file
    // does not open, nothing is saved, the part file is gone; the next try works.
    sync_until(&mut liaison, "onderweg@bz", &["Opname"]).await;
    let id = filed.notice.id.to_string();
    let a = &filed.notice.attachments[0];
    let out = tempfile::tempdir().unwrap();
    let part = out.path().join(format!(".{}.kring-part", &a.blob[..16]));
    std::fs::write(&part, vec![0u8; 1000]).unwrap();
    let err = liaison
        .save_attachments(&id, out.path(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing was saved"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    liaison
        .save_attachments(&id, out.path(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out.path().join("opname.bin")).unwrap(),
        content
    );
}
