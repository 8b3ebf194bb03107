//! The scenarios that show how cost grows: `single-relay` (federation's share),
//! `fan-out` (devices of one community) and `communities` (communities at one hub).

use super::*;

/// single-relay: the throughput flow with everything at the hub.
pub(crate) async fn single_relay(
    o: &Options,
    t: &mut Table,
    federated: Option<&FlowResult>,
) -> Result<bool, String> {
    mqtt::mosquitto_binary()?;
    progress("single-relay: setting up one relay (bz, the hub), filers and devices");
    let mut k = KringSetup::create(
        Shape::single_relay(o.filers, DEVICES, 1)
            .with_request_limit(Some(o.relay_rps.unwrap_or(BENCH_RPS))),
    )
    .await?;
    k.filings_in_flight = o.filings_in_flight;
    t.info(
        "single-relay",
        "setup",
        format!("{} ({:.1} s)", k.shape.describe(), k.setup.as_secs_f64()),
    );
    let mut m = mosquitto_for(&k, Autosave::EverySecond).await?;
    let mut problems = Vec::new();
    let names = (["single-relay/1", "single-relay/W"], false);
    for c in compare_windows(o, t, names, &mut k, &mut m.clients, &mut problems).await? {
        let (scenario, kr) = (c.scenario, &c.kring);
        if c.window == o.window
            && let Some(f) = federated
        {
            t.info(
                scenario,
                "Kring: single relay vs federated",
                format!(
                    "{:.2}x the msg/s, {:.2}x the relay CPU per delivery (federated: {:.1} msg/s, {:.0} µs)",
                    kr.notices_per_s() / f.notices_per_s().max(1e-9),
                    kr.cpu_per_delivery_us().unwrap_or_default()
                        / f.cpu_per_delivery_us().unwrap_or_default().max(1e-9),
                    f.notices_per_s(),
                    f.cpu_per_delivery_us().unwrap_or_default()
                ),
            );
        }
    }
    t.note(format!(
        "single-relay: the throughput flow with the filer(s) and all {DEVICES} devices at {HUB}, the community's \
         hub: one relay process, no federation hop; the filer's acknowledgement is {HUB}'s ordering (durable). \
         mosquitto as in throughput. Every Kring relay of the bench lets an identity make {BENCH_RPS} requests/s \
         (--relay-rps): with the relay's default of 200/s (after a burst of 400) a filer with 1 in flight meets \
         the limit, and such a run measures the limit and the audit record of each refusal."
    ));
    Ok(problem_rows(t, &problems))
}

/// Deliveries per fan-out step (full, quick).
const FANOUT_DELIVERIES: (usize, usize) = (50_000, 10_000);

/// fan-out: one community at one relay with more and more devices.
pub(crate) async fn fan_out(o: &Options, t: &mut Table) -> Result<bool, String> {
    mqtt::mosquitto_binary()?;
    let scenario = "fan-out";
    let target = if o.quick {
        FANOUT_DELIVERIES.1
    } else {
        FANOUT_DELIVERIES.0
    };
    let mut problems = Vec::new();
    // (devices, relay CPU per delivery in µs)
    let mut cost = Vec::new();
    for &n in &o.fanout {
        let notices = (target / n).max(o.window);
        progress(&format!(
            "fan-out: one relay, {n} devices, {notices} notices, {} in flight",
            o.window
        ));
        let mut k = KringSetup::create(
            Shape::single_relay(o.filers, n, 1)
                .with_request_limit(Some(o.relay_rps.unwrap_or(BENCH_RPS))),
        )
        .await?;
        let kr = closed_loop(&mut k, notices, o.window).await?;
        // Kring's devices go before mosquitto's subscribers come.
        k.disconnect_devices();
        progress(&format!("fan-out: mosquitto, {n} subscribers"));
        let mut m = mosquitto_for(&k, Autosave::EverySecond).await?;
        let mr = m
            .clients
            .run(notices, None, o.window, Duration::from_secs(3600))
            .await?;
        drop(m);
        let us = kr.cpu_per_delivery_us().unwrap_or_default();
        t.info(
            scenario,
            format!("{n} devices: Kring"),
            format!(
                "{:.1} notices/s = {:.0} deliveries/s; p99 {}; relay CPU {us:.1} µs per delivery \
                 ({notices} notices; setup {:.1} s)",
                kr.notices_per_s(),
                kr.deliveries_per_s(),
                ms(percentile(&kr.service, 99.0)),
                k.setup.as_secs_f64()
            ),
        );
        t.info(
            scenario,
            format!("{n} devices: mosquitto"),
            format!(
                "{:.1} msg/s = {:.0} deliveries/s; p99 {}",
                mr.notices_per_s(),
                mr.deliveries_per_s(),
                ms(percentile(&mr.service, 99.0))
            ),
        );
        t.info(
            scenario,
            format!("{n} devices: Kring / mosquitto"),
            format!("{:.2}", kr.notices_per_s() / mr.notices_per_s().max(1e-9)),
        );
        collect(&mut problems, &format!("Kring, {n} devices"), &kr);
        collect(&mut problems, &format!("mosquitto, {n} subscribers"), &mr);
        cost.push((n, us));
    }
    if let (Some(&(n0, c0)), Some(&(n1, c1))) = (cost.first(), cost.last())
        && n1 > n0
    {
        let r = c1 / c0.max(1e-9);
        let trend = if r > 1.25 {
            "grows"
        } else if r < 0.8 {
            "falls"
        } else {
            "stays flat"
        };
        t.goal(
            scenario,
            format!("CPU per delivery, {n1} vs {n0} devices"),
            format!("{r:.2}x ({c1:.1} vs {c0:.1} µs): {trend}"),
            "<= 1.25 (does not grow)",
            verdict_if(n1 >= 1000, r <= 1.25),
        );
    }
    t.note(format!(
        "fan-out: one community hubbed at {HUB}; filer(s) and N devices at {HUB} (raw QUIC devices as in \
         throughput, each its own user and member); closed loop with {} in flight; about {target} deliveries per \
         step (notices = {target} / N, at least one window); relay CPU per delivery = CPU time of {HUB} over the run \
         / deliveries. mosquitto: N QoS 1 subscribers, the same users' certificates, connected after Kring's \
         devices left.{}",
        o.window,
        if o.quick && o.fanout.last().is_some_and(|&n| n < 1000) {
            " --quick runs 10 and 100 devices only (the goal is judged at 1,000)."
        } else {
            ""
        }
    ));
    Ok(problem_rows(t, &problems))
}

/// Devices per community in `communities`: with the filer and the owner, 10 members.
const COMMUNITY_DEVICES: usize = 8;
/// Notices per community in `communities` (full, quick).
const COMMUNITY_ROUNDS: (usize, usize) = (3, 5);

/// communities: a relay hubbing many communities against one community.
pub(crate) async fn communities(o: &Options, t: &mut Table) -> Result<bool, String> {
    let scenario = "communities";
    let n = o.communities;
    let rounds = if o.quick {
        COMMUNITY_ROUNDS.1
    } else {
        COMMUNITY_ROUNDS.0
    };
    let total = n * rounds;
    let mut problems = Vec::new();
    // (communities, notices/s, relay CPU per notice in µs)
    let mut figures = Vec::new();
    let counts = if n > 1 { vec![1, n] } else { vec![1] };
    for c in counts {
        progress(&format!(
            "communities: {c} communit{} of {} members at {HUB}, {total} notices",
            if c == 1 { "y" } else { "ies" },
            COMMUNITY_DEVICES + 2
        ));
        let mut k = KringSetup::create(
            Shape::single_relay(1, COMMUNITY_DEVICES, c)
                .with_request_limit(Some(o.relay_rps.unwrap_or(BENCH_RPS))),
        )
        .await?;
        let r = closed_loop(&mut k, total, 1).await?;
        let us = r.cpu_per_notice_us().unwrap_or_default();
        let label = if c == 1 {
            "1 community".to_string()
        } else {
            format!("{c} communities")
        };
        t.info(
            scenario,
            format!("{label}: filed+delivered"),
            format!(
                "{:.1} notices/s to all {} ({} of {} deliveries); p50 {} p99 {}; setup {:.1} s",
                r.notices_per_s(),
                r.devices,
                r.deliveries,
                r.notices * r.devices,
                ms(percentile(&r.service, 50.0)),
                ms(percentile(&r.service, 99.0)),
                k.setup.as_secs_f64()
            ),
        );
        t.info(
            scenario,
            format!("{label}: relay CPU per notice"),
            format!(
                "{us:.0} µs ({:.2} s of CPU for {} notices; {:.2} acknowledgements per notice and device)",
                r.server_cpu.unwrap_or_default(),
                r.notices,
                r.device_acks.unwrap_or_default() as f64 / (r.notices * r.devices).max(1) as f64
            ),
        );
        collect(&mut problems, &label, &r);
        figures.push((c, r.notices_per_s(), us));
    }
    if let [(_, rate1, cpu1), (cn, rate_n, cpu_n)] = figures[..] {
        let growth = cpu_n / cpu1.max(1e-9) - 1.0;
        t.goal(
            scenario,
            format!("CPU per notice, {cn} vs 1 community"),
            format!(
                "{:+.1}% (notices/s {:.2}x)",
                growth * 100.0,
                rate_n / rate1.max(1e-9)
            ),
            "within 25%",
            verdict_if(cn >= 1000, growth <= 0.25),
        );
    }
    t.note(format!(
        "communities: one relay ({HUB}) hubbing N communities of 10 members (an owner, the filer and the same \
         {COMMUNITY_DEVICES} devices in each; every device a raw QUIC connection that acknowledges as the real client does: one request for \
         the communities of a run, at most one every 25 ms); \
         the filer files {total} notices, one per filing, to the communities in turn ({rounds} per community); \
         for comparison, the same number into the one community of another relay. Relay CPU per notice = CPU time of {HUB} from \
         the first filing to the last delivery / notices. The relay runs with requests_per_second {} \
         (--relay-rps; the relay's default, 200 per identity, would refuse the filer and the devices' Acks).{}",
        o.relay_rps.unwrap_or(BENCH_RPS),
        if n < 1000 {
            " The goal is judged at 1,000 communities."
        } else {
            ""
        }
    ));
    Ok(problem_rows(t, &problems))
}
