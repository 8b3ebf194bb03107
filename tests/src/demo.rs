//! The story `kring-demo` tells. It grows with the product: today it shows the label
//! rule for the demo users and a whole community life on one relay (federation links
//! between relays come with the federation work).
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
                     Generates a demo federation (SPEC §8) in a temporary directory, starts its\n\
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

    step("2. Who may read what (the label rule, SPEC §3)");
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

    step("3. The relays start (separate kring-relay processes, TLS 1.3 mutual auth)");
    fed.start_all().map_err(|x| e(&x))?;
    for id in crate::RELAYS {
        say(format!(
            "relay {id:<7} listening on {}",
            fed.relay_addr(id)
                .map(|a| a.to_string())
                .unwrap_or_default()
        ));
    }

    step("4. A trusted community on relay bz");
    let mut liaison = client(&fed, "liaison@bz").await?;
    let mut admin = client(&fed, "admin@bz").await?;
    let _stagiair = client(&fed, "stagiair@bz").await?;
    let created = liaison
        .create_community("desinformatie", "NL:STG-CONFIDENTIEEL")
        .await
        .map_err(|x| e(&x))?;
    say(format!(
        "liaison@bz created {} with maximum label NL:STG-CONFIDENTIEEL (an MLS group; bz is its hub)",
        created.community
    ));
    liaison
        .add_members("desinformatie", &["admin@bz".to_string()])
        .await
        .map_err(|x| e(&x))?;
    say(
        "liaison@bz added admin@bz: the relay checked the commit (MLS PublicGroup) and the label policy",
    );
    match liaison
        .add_members("desinformatie", &["stagiair@bz".to_string()])
        .await
    {
        Err(err) => say(format!("adding stagiair@bz is refused: {err}")),
        Ok(_) => return Err("an under-cleared member was added".into()),
    }

    step("5. A signal is filed and read");
    admin.sync().await.map_err(|x| e(&x))?;
    let filed = liaison
        .file_notice(crate::signal(
            "desinformatie",
            "NL:DEP-VERTROUWELIJK",
            "Gecoördineerde berichten over verkiezingen",
            "Netwerk van accounts verspreidt identieke berichten.",
        ))
        .await
        .map_err(|x| e(&x))?;
    say(format!(
        "liaison@bz filed notice {} (label NL:DEP-VERTROUWELIJK): relay acknowledged it durably as seq {}",
        filed.notice.id,
        filed.seq.unwrap_or_default()
    ));
    let report = admin.sync().await.map_err(|x| e(&x))?;
    let got: Vec<_> = report.notices().map(|n| n.title.clone()).collect();
    expect(got.len() == 1, "admin@bz to receive exactly one notice")?;
    say(format!(
        "admin@bz decrypted it on their device: {:?}",
        got[0]
    ));

    step("6. Policy refuses what exceeds the community's maximum");
    match liaison
        .file_notice(crate::signal(
            "desinformatie",
            "NL:STG-GEHEIM",
            "te hoog",
            "-",
        ))
        .await
    {
        Err(err) => say(format!(
            "filing NL:STG-GEHEIM is refused (exit {}): {err}",
            err.exit_code()
        )),
        Ok(_) => return Err("a notice above the community maximum was accepted".into()),
    }

    step("7. Store and forward: the relay restarts; nothing acknowledged is lost");
    liaison
        .file_notice(crate::signal(
            "desinformatie",
            "NL:STG-CONFIDENTIEEL",
            "Benadering diaspora",
            "-",
        ))
        .await
        .map_err(|x| e(&x))?;
    say("liaison@bz filed a second notice while admin@bz is offline");
    liaison.disconnect().await;
    admin.disconnect().await;
    fed.stop("bz").map_err(|x| e(&x))?;
    say("relay bz stopped (drained, store flushed)");
    fed.start("bz").map_err(|x| e(&x))?;
    say("relay bz restarted");
    let report = admin.sync().await.map_err(|x| e(&x))?;
    let got: Vec<_> = report.notices().map(|n| n.title.clone()).collect();
    expect(
        got == ["Benadering diaspora"],
        "admin@bz to catch up on exactly the missed notice",
    )?;
    say(format!("admin@bz caught up, exactly once: {got:?}"));

    step("Summary");
    say("labels decided with reasons; a community as an MLS group; policy at the relay and");
    say("the client; durable store-and-forward across a relay restart. Federation between");
    say("relays (post-a -> bz -> nctv/aivd) is the next chapter of this demo.");

    if options.keep_running {
        step("The relays keep running. Try, in another terminal:");
        let p = fed.user_dir("liaison@bz");
        say(format!("kring --profile {} community list", p.display()));
        say(format!("kring --profile {} notice list", p.display()));
        say("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(())
}

async fn client(fed: &Federation, user: &str) -> Result<Client, String> {
    let mut c = fed.client(user).map_err(|x| x.to_string())?;
    c.publish_key_packages(5).await.map_err(|x| x.to_string())?;
    Ok(c)
}
