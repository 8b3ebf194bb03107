//! Device cursors at a relay that was never restored from a backup.

use super::*;
use kring_protocol::wire::LogMark;

#[test]
fn a_relay_never_restored_answers_a_devices_cursors_with_nothing_to_rewind() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (filed, _) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_eq!(filed_seqs(filed), vec![Some(1)]);
    let before = bz.state();
    // Cursors a restored relay would act on: past its log, and of another hub.
    let marks = vec![
        LogMark {
            community: "kring@bz".into(),
            seq: 1_000,
        },
        LogMark {
            community: "kring@nctv".into(),
            seq: 5,
        },
    ];
    let mut cx = bz.cx();
    let answer = crate::core::recovery::cursors(&bz.core, &mut cx, &bz.caller("liaison@bz"), marks);
    assert_eq!(answer.unwrap(), Response::Cursors { rewind: Vec::new() });
    assert!(!bz.core.recovery().restored());
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.state(), before);
    assert_eq!(bz.last_seq("kring@bz"), 1);
}
