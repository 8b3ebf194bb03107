//! The demo (`kring-demo`, README's first command) plays the whole story against real
//! relay processes and exits 0 only if every step behaved as narrated.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

#[test]
fn the_demo_tells_the_whole_story() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kring-demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kring-demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for act in [
        "== 4. A disinformation community",
        "== 8. bz's liaison forwards the embassy's signal",
        "forwarded from desinformatie@bz (filed by analist@post-a",
        "== 9. The embassy's relay goes down",
        "caught up, in order, exactly once",
        "== 10. A liaison's device is lost",
        "cut off",
        "it cannot reconnect",
        "carries on without a gap",
    ] {
        assert!(stdout.contains(act), "missing {act:?} in:\n{stdout}");
    }
}
