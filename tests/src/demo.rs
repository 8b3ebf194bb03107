//! The story `kring-demo` tells: the label rule for the demo users, then a
//! federation of four relays: a community spanning four organisations, an embassy
//! signal reaching the ministries, refusals that say why, a relay outage that
//! loses nothing, and a lost device revoked everywhere.
//!
//! Every step checks what happened; the demo exits non-zero if anything did not go as
//! narrated.

use std::process::ExitCode;

use kring_client::Client;
use kring_policy::{Clearance, Label, decide};

use crate::{Federation, RelayLauncher};

/// Options of `kring-demo`.
#[derive(Debug, Default)]
struct Options {
    keep_running: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep-running" => o.keep_running = true,
            "-h" | "--help" => {
                println!(
                    "kring-demo [--keep-running]\n\n\
                     Generates a demo federation in a temporary directory, starts its\n\
                     relays as separate processes and plays the Kring story with narration.\n\
                     --keep-running  leave the relays up afterwards and print how to use `kring`."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(o)
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn say(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

/// Runs the demo; the exit code is 0 when every step behaved as narrated.
pub fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kring-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kring-demo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(story(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nkring-demo: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

fn expect(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("expected {what}"))
    }
}

async fn story(options: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let e = |e: &dyn std::fmt::Display| e.to_string();

    step("1. A development PKI for the demo federation");
    let mut fed = Federation::create(RelayLauncher::demo_binary(exe)).map_err(|x| e(&x))?;
    say(format!(
        "federation root, 4 organisation CAs, relays and users in {}",
        fed.dir().display()
    ));
    fed.issue_user("stagiair@bz", "NL:DEP-VERTROUWELIJK", &[])
        .map_err(|x| e(&x))?;
    say("an extra user stagiair@bz with clearance NL:DEP-VERTROUWELIJK");

    step("2. Who may read what (the label rule)");
    let people = [
        ("analist@post-a", "NL:STG-CONFIDENTIEEL"),
        ("liaison@bz", "NL:STG-GEHEIM"),
        ("analist@aivd", "NL:STG-ZEER-GEHEIM;CMP=CYBER"),
        ("stagiair@bz", "NL:DEP-VERTROUWELIJK"),
    ];
    let labels = [
        "NL:STG-CONFIDENTIEEL",
        "NATO:NATO-CONFIDENTIAL",
        "NL:STG-GEHEIM;CMP=CYBER;TLP=AMBER",
        "TLP:GREEN",
    ];
    for label in labels {
        let l: Label = label.parse().map_err(|x| e(&x))?;
        say(format!("label {l}"));
        for (who, clearance) in people {
            let c: Clearance = clearance.parse().map_err(|x| e(&x))?;
            let d = decide(&l, &c);
            say(format!(
                "   {:<16} {:<6} {}",
                who,
                if d.allowed { "MAY" } else { "MAY NOT" },
                d.reasons.first().cloned().unwrap_or_default()
            ));
        }
    }

    step("3. Four relays of four organisations federate (QUIC, mutual TLS 1.3)");
    fed.start_all().map_err(|x| e(&x))?;
    for id in crate::RELAYS {
        say(format!(
            "relay {id:<7} on {}",
            fed.relay_addr(id)
                .map(|a| a.to_string())
                .unwrap_or_default()
        ));
    }
    let mut liaison = client(&fed, "liaison@bz").await?;
    let mut nctv = client(&fed, "liaison@nctv").await?;
    let mut aivd = client(&fed, "analist@aivd").await?;
    let mut analist = client(&fed, "analist@post-a").await?;
    let _stagiair = client(&fed, "stagiair@bz").await?;
    say(
        "liaison@bz, liaison@nctv, analist@aivd and analist@post-a published MLS key packages at their home relays",
    );

    step("4. A disinformation community, hub bz, members at all four relays");
    let max = "NL:STG-CONFIDENTIEEL";
    liaison
        .create_community("desinformatie", max)
        .await
        .map_err(|x| e(&x))?;
    say(format!(
        "liaison@bz created desinformatie@bz (an MLS group) with maximum label {max}"
    ));
    let members = ["analist@post-a", "liaison@nctv", "analist@aivd"];
    let max_label: Label = max.parse().map_err(|x| e(&x))?;
    // (member, their clearance, their home relay's accreditation) as in the demo federation.
    let admitted = [
        (
            "analist@post-a",
            "NL:STG-CONFIDENTIEEL",
            "NL:STG-CONFIDENTIEEL",
        ),
        ("liaison@nctv", "NL:STG-GEHEIM", "NL:STG-GEHEIM"),
        (
            "analist@aivd",
            "NL:STG-ZEER-GEHEIM;CMP=CYBER",
            "NL:STG-ZEER-GEHEIM",
        ),
    ];
    for (m, clearance, accreditation) in admitted {
        let home = m.rsplit_once('@').map(|(_, r)| r).unwrap_or_default();
        let c: Clearance = clearance.parse().map_err(|x| e(&x))?;
        let a: Clearance = accreditation.parse().map_err(|x| e(&x))?;
        let (dc, da) = (decide(&max_label, &c), decide(&max_label, &a));
        say(format!(
            "policy for {m}: clearance {c} {}, relay {home} ({a}) {}",
            if dc.allowed { "admits" } else { "REFUSES" },
            if da.allowed { "admits" } else { "REFUSES" },
        ));
    }
    liaison
        .add_members("desinformatie@bz", &members)
        .await
        .map_err(|x| e(&x))?;
    say(
        "one MLS commit, verified by hub bz (PublicGroup); Welcomes routed to post-a, nctv and aivd",
    );
    for c in [&mut analist, &mut nctv, &mut aivd] {
        wait_joined(c, "desinformatie@bz").await?;
        say(format!(
            "{} joined from the Welcome its home relay delivered",
            c.user()
        ));
    }
    match liaison.add_members("desinformatie", &["stagiair@bz"]).await {
        Err(err) => say(format!("adding stagiair@bz is refused: {err}")),
        Ok(_) => return Err("an under-cleared member was added".into()),
    }

    step("5. The embassy analyst files a signal, with the list of accounts attached");
    let files = fed.dir().join("demo-files");
    std::fs::create_dir_all(&files).map_err(|x| e(&x))?;
    let accounts = files.join("accounts.csv");
    let listing: String = (1..=2000)
        .map(|i| {
            format!(
                "@burger_{i:04},2024-05-{:02},identiek bericht\n",
                i % 28 + 1
            )
        })
        .collect();
    std::fs::write(&accounts, &listing).map_err(|x| e(&x))?;
    let mut signal = crate::signal(
        "desinformatie@bz",
        "NL:DEP-VERTROUWELIJK;TLP=GREEN",
        "Gecoördineerde berichten over verkiezingen",
        "Netwerk van accounts verspreidt identieke berichten.",
    );
    signal.attachments = vec![accounts.clone()];
    let filed = analist.file_notice(signal).await.map_err(|x| e(&x))?;
    say("analist@post-a's device checked the label against their clearance and encrypted it");
    say(format!(
        "it sealed accounts.csv ({} bytes) with a fresh key, carried inside the encrypted notice, \
         and uploaded the sealed file to relay post-a before filing",
        listing.len()
    ));
    let seq = filed.seq.ok_or("the hub did not order the signal")?;
    say(
        "post-a checked member, maximum and accreditation, stored it durably and queued it for hub bz",
    );
    say(format!(
        "hub bz checked it again (post-a's and its own accreditation) and ordered it as #{seq}"
    ));
    for c in [&mut liaison, &mut nctv, &mut aivd] {
        let got = wait_titles(c, "desinformatie@bz", 1).await?;
        say(format!(
            "{:<14} received and decrypted: {:?} (its relay checked the label against its accreditation and the sender relay's)",
            c.user(),
            got[0]
        ));
    }

    let saved_dir = files.join("liaison-nctv");
    let saved = nctv
        .save_attachments(&filed.notice.id.to_string(), &saved_dir, &mut |_| {})
        .await
        .map_err(|x| e(&x))?;
    let copy = std::fs::read_to_string(saved_dir.join("accounts.csv")).map_err(|x| e(&x))?;
    expect(
        saved.len() == 1 && copy == listing,
        "liaison@nctv to save the attachment as filed",
    )?;
    say(format!(
        "liaison@nctv saved accounts.csv (SHA-256 {}…, as the notice says): relay nctv fetched \
         the sealed file through hub bz from post-a, each relay checking the notice's label \
         against the next one's accreditation; no relay can open it",
        &saved[0].sha256[..16]
    ));

    step("6. A state-actors community at nctv (max NL:STG-GEHEIM) refuses the embassy analyst");
    nctv.create_community("statelijke-actoren", "NL:STG-GEHEIM")
        .await
        .map_err(|x| e(&x))?;
    match nctv
        .add_members("statelijke-actoren@nctv", &["analist@post-a"])
        .await
    {
        Err(err) => say(format!("refused: {err}")),
        Ok(_) => return Err("the embassy analyst was added to a STG-GEHEIM community".into()),
    }

    step("7. A STG-GEHEIM notice does not go into the disinformation community");
    match liaison
        .file_notice(crate::signal(
            "desinformatie@bz",
            "NL:STG-GEHEIM",
            "te hoog",
            "-",
        ))
        .await
    {
        Err(err) => say(format!("refused (exit {}): {err}", err.exit_code())),
        Ok(_) => return Err("a notice above the community maximum was accepted".into()),
    }

    step("8. bz's liaison forwards the embassy's signal to nctv's community, as TLP allows");
    nctv.add_members("statelijke-actoren@nctv", &["liaison@bz"])
        .await
        .map_err(|x| e(&x))?;
    wait_joined(&mut liaison, "statelijke-actoren@nctv").await?;
    say("liaison@nctv added liaison@bz to statelijke-actoren@nctv (members of nctv and bz)");
    let signal = liaison
        .notices(Some("desinformatie@bz"))
        .map_err(|x| e(&x))?
        .into_iter()
        .next()
        .ok_or("liaison@bz holds no signal to forward")?;
    let forwarded = liaison
        .forward(
            &signal.id.to_string(),
            "statelijke-actoren@nctv",
            None,
            Some("Mogelijk statelijke actor; ter beoordeling"),
        )
        .await
        .map_err(|x| e(&x))?;
    say(format!(
        "the signal is TLP:GREEN, so it may go into any community: liaison@bz's device checked \
         that, the label (never lower) against the maximum and their clearance; hub nctv checked \
         the TLP of the original again (bound to the ciphertext) and ordered it as #{}",
        forwarded.seq.map_or_else(|| "?".into(), |s| s.to_string())
    ));
    let got = wait_titles(&mut nctv, "statelijke-actoren@nctv", 1).await?;
    let received = nctv
        .notices(Some("statelijke-actoren@nctv"))
        .map_err(|x| e(&x))?
        .into_iter()
        .find(|n| n.forwarded_from.is_some())
        .ok_or("liaison@nctv did not receive the forward")?;
    let from = received
        .forwarded_from
        .as_ref()
        .ok_or("the forward does not say where it comes from")?;
    expect(
        from.community == "desinformatie@bz" && from.sender == "analist@post-a",
        "the forward to name its original",
    )?;
    say(format!(
        "liaison@nctv received {:?}, forwarded from {} (filed by {} at {}), with {} attachment(s)",
        got[0],
        from.community,
        from.sender,
        kring_client::cli::output::human_time(&from.filed_at),
        received.attachments.len()
    ));
    expect(
        received.attachments.len() == 1,
        "the forward to carry the original's attachment",
    )?;
    say(
        "a TLP:RED notice is never forwarded; AMBER+STRICT stays within the organisation, AMBER within it and its declared clients",
    );

    step("9. The embassy's relay goes down; nothing is lost");
    analist.disconnect().await;
    fed.stop("post-a").map_err(|x| e(&x))?;
    say("relay post-a stopped");
    for t in ["Benadering diaspora", "Phishing bij partnerorganisatie"] {
        liaison
            .file_notice(crate::signal(
                "desinformatie@bz",
                "NL:STG-CONFIDENTIEEL",
                t,
                "-",
            ))
            .await
            .map_err(|x| e(&x))?;
        say(format!(
            "liaison@bz filed {t:?}; hub bz keeps it in its outbox for post-a"
        ));
    }
    fed.start("post-a").map_err(|x| e(&x))?;
    say("relay post-a restarted; the link comes back and bz delivers what post-a missed");
    let got = wait_titles(&mut analist, "desinformatie@bz", 3).await?;
    expect(
        got[1..] == ["Benadering diaspora", "Phishing bij partnerorganisatie"],
        "the analist to catch up in hub order",
    )?;
    say(format!(
        "analist@post-a caught up, in order, exactly once: {:?}",
        &got[1..]
    ));

    step("10. A liaison's device is lost: nctv's org-admin revokes it");
    let watch = crate::steps::watch_online(nctv)
        .await
        .map_err(|x| format!("liaison@nctv: {x}"))?;
    say("liaison@nctv's device is online at relay nctv, watching for notices");
    let mut admin = fed.client("admin@nctv").map_err(|x| e(&x))?;
    let started = std::time::Instant::now();
    let revoked = admin
        .revoke("liaison@nctv", "device lost during a mission abroad")
        .await
        .map_err(|x| e(&x))?;
    say(format!(
        "admin@nctv signed a revocation statement with their certificate key; relay nctv made it \
         durable and is passing it to {}",
        revoked.peers.join(", ")
    ));
    let (mut nctv, ended, result) = tokio::time::timeout(std::time::Duration::from_secs(10), watch)
        .await
        .map_err(|_| "the revoked device was not cut off within 10 s".to_string())?
        .map_err(|x| e(&x))?;
    match result {
        Err(err) if err.exit_code() == 4 => say(format!(
            "liaison@nctv's device was cut off {} ms later: {err}",
            ended.duration_since(started).as_millis()
        )),
        other => return Err(format!("the revoked device was not cut off: {other:?}")),
    }
    match nctv.sync().await {
        Err(err) if err.exit_code() == 4 => say(format!("it cannot reconnect: {err}")),
        other => return Err(format!("the revoked device reconnected: {other:?}")),
    }
    for community in ["desinformatie@bz"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            liaison.sync().await.map_err(|x| e(&x))?;
            let info = liaison.community_info(community).await.map_err(|x| e(&x))?;
            if !info.members.iter().any(|m| m == "liaison@nctv") {
                say(format!(
                    "hub {} proposed the removal from {community} as the group's external sender; \
                     liaison@bz's client committed it (epoch {}): members now {}",
                    community
                        .rsplit_once('@')
                        .map(|(_, h)| h)
                        .unwrap_or_default(),
                    info.epoch,
                    info.members.join(", ")
                ));
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("liaison@nctv was not removed from {community}"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    analist
        .file_notice(crate::signal(
            "desinformatie@bz",
            "NL:DEP-VERTROUWELIJK",
            "Nieuwe golf van nepaccounts",
            "-",
        ))
        .await
        .map_err(|x| e(&x))?;
    for c in [&mut liaison, &mut aivd] {
        let got = wait_titles(c, "desinformatie@bz", 4).await?;
        say(format!(
            "{:<14} received {:?}: the community carries on without a gap",
            c.user(),
            got[3]
        ));
    }
    say("the new notice is encrypted for the next epoch: the revoked device holds no key for it");

    step("Summary");
    say("labels decided with reasons at every hop; communities as MLS groups spanning four");
    say("organisations; hub ordering; refusals that say why; durable store-and-forward across");
    say("a relay outage; revocation that cuts a device off everywhere and removes it from its");
    say(
        "communities. Every refusal and revocation is in the relays' signed, hash-chained audit logs.",
    );

    // Release the demo users' local stores so `kring` can use the same profiles.
    drop((liaison, nctv, aivd, analist));
    if options.keep_running {
        step("The relays keep running. Try, in another terminal:");
        say("(build the CLI first: cargo build --release --bin kring)");
        for user in [
            "liaison@bz",
            "analist@post-a",
            "liaison@nctv",
            "analist@aivd",
        ] {
            say(format!(
                "export {}={}",
                profile_var(user),
                fed.user_dir(user).display()
            ));
        }
        say("kring --profile $LIAISON_BZ community list");
        say("kring --profile $ANALIST_POST_A notice list");
        say("kring --profile $LIAISON_NCTV notice watch --json");
        say(
            "echo tekst | kring --profile $ANALIST_POST_A notice file --community desinformatie@bz \\",
        );
        say(
            "     --label NL:DEP-VERTROUWELIJK --category disinformation --title 'Nieuw signaal' \\",
        );
        say("     --attach FILE");
        say(format!(
            "kring --profile $LIAISON_BZ notice attachments {} --out /tmp/bijlagen",
            filed.notice.id
        ));
        say("Press Ctrl-C to stop the federation (its directory is then removed).");
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(())
}

fn profile_var(user: &str) -> String {
    user.replace(['@', '-'], "_").to_uppercase()
}

async fn wait_joined(c: &mut Client, community: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        c.sync().await.map_err(|x| x.to_string())?;
        if c.community_info(community).await.is_ok() && c.notices(Some(community)).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{} did not join {community}", c.user()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn wait_titles(c: &mut Client, community: &str, n: usize) -> Result<Vec<String>, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        c.sync().await.map_err(|x| x.to_string())?;
        let got: Vec<String> = c
            .notices(Some(community))
            .map_err(|x| x.to_string())?
            .into_iter()
            .map(|n| n.title)
            .collect();
        if got.len() >= n {
            return Ok(got);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{} has {} of {n} notices", c.user(), got.len()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn client(fed: &Federation, user: &str) -> Result<Client, String> {
    let mut c = fed.client(user).map_err(|x| x.to_string())?;
    c.publish_key_packages(5).await.map_err(|x| x.to_string())?;
    Ok(c)
}
