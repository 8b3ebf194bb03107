//! Forwarding notices between communities under TLP, across relays of different
//! organisations: what may go goes, with its provenance; what may not is refused on
//! the device naming the rule; and a forward crafted past the device's checks is
//! refused by the forwarder's home relay or the target community's hub, told to the
//! filer and audited.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use kring_client::{Client, ClientError, Ordering};
use kring_tests::steps::{draft, join, ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// The id of the notice titled `title` in `community` on `c`.
fn id_of(c: &Client, community: &str, title: &str) -> String {
    c.notices(Some(community))
        .unwrap()
        .into_iter()
        .find(|n| n.title == title)
        .unwrap_or_else(|| panic!("{} has no notice {title} in {community}", c.user()))
        .id
        .to_string()
}

/// A refusal on the device: exit 3, naming `rule` and saying `says`.
fn refused_by(result: Result<kring_client::FiledNotice, ClientError>, rule: &str, says: &str) {
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("forward refused by the {rule} rule")),
        "{text}"
    );
    assert!(text.contains(says), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_follow_tlp_across_organisations_and_hubs_check_again() {
    let mut fed = federation();
    // bz (Foreign Affairs) declares its embassy post-a a client.
    fed.set_declared_clients("bz", &["post-a"]).unwrap();
    fed.start_all().unwrap();
    let mut liaison = ready(&fed, "liaison@bz").await;
    let mut admin = ready(&fed, "admin@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut post = ready(&fed, "analist@post-a").await;

    // The source: a community of bz only. Targets: keten@nctv (nctv and bz, hubbed
    // at nctv), ambassade@post-a (post-a and bz, hubbed at post-a), gemengd@bz (bz
    // and nctv, hubbed at bz).
    liaison
        .create_community("bron", "NL:STG-GEHEIM")
        .await
        .unwrap();
    liaison.add_members("bron@bz", &["admin@bz"]).await.unwrap();
    join(&mut admin, "bron@bz").await;
    nctv.create_community("keten", "NL:STG-GEHEIM")
        .await
        .unwrap();
    nctv.add_members("keten@nctv", &["liaison@bz"])
        .await
        .unwrap();
    post.create_community("ambassade", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    post.add_members("ambassade@post-a", &["liaison@bz"])
        .await
        .unwrap();
    liaison
        .create_community("gemengd", "NL:STG-GEHEIM")
        .await
        .unwrap();
    liaison
        .add_members("gemengd@bz", &["liaison@nctv"])
        .await
        .unwrap();
    join(&mut liaison, "keten@nctv").await;
    join(&mut liaison, "ambassade@post-a").await;
    join(&mut nctv, "gemengd@bz").await;

    let colours = ["GREEN", "RED", "AMBER+STRICT", "AMBER"];
    for c in colours {
        admin
            .file_notice(draft(
                "bron@bz",
                &format!("NL:STG-CONFIDENTIEEL;TLP={c}"),
                c,
            ))
            .await
            .unwrap();
    }
    sync_until(&mut liaison, "bron@bz", &colours).await;
    let green = id_of(&liaison, "bron@bz", "GREEN");
    let original = liaison
        .notices(Some("bron@bz"))
        .unwrap()
        .into_iter()
        .find(|n| n.title == "GREEN")
        .unwrap();

    // GREEN into another organisation's community, hubbed there: ordered by nctv,
    // read by nctv's liaison with where it comes from.
    let filed = liaison
        .forward(&green, "keten@nctv", None, Some("Ter informatie"))
        .await
        .unwrap();
    assert!(
        matches!(filed.ordering, Ordering::Ordered { .. }),
        "{:?}",
        filed.ordering
    );
    sync_until(&mut nctv, "keten@nctv", &["GREEN"]).await;
    let got = nctv.notices(Some("keten@nctv")).unwrap().remove(0);
    assert_eq!(got.label, "NL:STG-CONFIDENTIEEL;TLP=GREEN");
    assert_eq!(got.sender, "liaison@bz");
    assert!(got.body.starts_with("Ter informatie\n"), "{}", got.body);
    assert!(got.body.ends_with(&original.body), "{}", got.body);
    let from = got.forwarded_from.clone().unwrap();
    assert_eq!(from.community, "bron@bz");
    assert_eq!(from.id, original.id);
    assert_eq!(from.sender, "admin@bz");
    assert_eq!(from.filed_at, original.filed_at);
    let json = got.to_json_line();
    assert!(
        json.contains(&format!(
            "\"forwarded_from\":{{\"community\":\"bron@bz\",\"id\":\"{}\",\"sender\":\"admin@bz\"",
            original.id
        )),
        "{json}"
    );
    assert!(original.to_json_line().contains("\"forwarded_from\":null"));

    // Refused on the device, naming the rule.
    let red = id_of(&liaison, "bron@bz", "RED");
    refused_by(
        liaison.forward(&red, "keten@nctv", None, None).await,
        "TLP",
        "TLP:RED may not be forwarded",
    );
    let strict = id_of(&liaison, "bron@bz", "AMBER+STRICT");
    refused_by(
        liaison.forward(&strict, "keten@nctv", None, None).await,
        "TLP",
        "also has members from nctv",
    );
    let amber = id_of(&liaison, "bron@bz", "AMBER");
    refused_by(
        liaison.forward(&amber, "keten@nctv", None, None).await,
        "TLP",
        "also has members from nctv",
    );
    refused_by(
        liaison
            .forward(
                &green,
                "keten@nctv",
                Some("NL:DEP-VERTROUWELIJK;TLP=GREEN"),
                None,
            )
            .await,
        "never-lower label",
        "lower than the original",
    );
    refused_by(
        liaison
            .forward(
                &green,
                "ambassade@post-a",
                Some("NL:STG-GEHEIM;TLP=GREEN"),
                None,
            )
            .await,
        "community maximum",
        "ambassade@post-a",
    );

    // AMBER into a community of bz and its declared client post-a, hubbed at post-a:
    // the hub applies the rule with the clients bz's relay declared.
    let filed = liaison
        .forward(&amber, "ambassade@post-a", None, None)
        .await
        .unwrap();
    assert!(
        matches!(filed.ordering, Ordering::Ordered { .. }),
        "{:?}",
        filed.ordering
    );
    sync_until(&mut post, "ambassade@post-a", &["AMBER"]).await;

    // A forward crafted past the device's checks (the original's TLP bound to it as
    // RED) into a community hubbed elsewhere: the forwarder's home relay bz checks
    // the rules like the hub and refuses it before it leaves (the hub nctv would
    // refuse it again).
    let mut forged = liaison
        .prepare_forward(&green, "keten@nctv", None, None)
        .await
        .unwrap();
    forged.original_label = "NL:STG-CONFIDENTIEEL;TLP=RED".parse().unwrap();
    forged.notice.title = "forged red".into();
    let err = liaison.file_forward(forged).await.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(
        err.to_string().contains("forward refused by the TLP rule")
            && err.to_string().contains("TLP:RED may not be forwarded"),
        "{err}"
    );
    // And in a community hubbed at the forwarder's own relay: AMBER+STRICT among
    // bz and nctv, refused to the filer at once.
    let mut forged = liaison
        .prepare_forward(&green, "gemengd@bz", None, None)
        .await
        .unwrap();
    forged.original_label = "NL:STG-CONFIDENTIEEL;TLP=AMBER+STRICT".parse().unwrap();
    forged.notice.title = "forged strict".into();
    let err = liaison.file_forward(forged).await.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(
        err.to_string().contains("forward refused by the TLP rule")
            && err.to_string().contains("members from nctv"),
        "{err}"
    );

    // Neither reached anyone; the genuine forward did.
    nctv.sync().await.unwrap();
    assert_eq!(titles(&nctv, "keten@nctv"), ["GREEN"]);
    assert!(titles(&nctv, "gemengd@bz").is_empty());

    // bz audited both refusals.
    let page = admin.audit_all(true).await.unwrap();
    assert_eq!(page.verify.unwrap().first_bad, None);
    let refusals = page
        .records
        .iter()
        .filter(|r| {
            r.action == "file-notices" && r.detail.contains("forward refused by the TLP rule")
        })
        .count();
    assert_eq!(refusals, 2, "bz did not audit both refused forwards");
}
