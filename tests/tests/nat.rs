//! Two offices, each one node behind its own NAT router, and a public relay node, in network
//! namespaces (`scripts/bench-nat.sh`): the offices reach each other through the relay, hole
//! punching makes the path direct where the NATs allow, and a payload and a rollout work end to
//! end either way.
//!
//! The script needs root; run as another user this test fails and says so.

use patchmesh_tests::{run_root_script, serial, NatReport};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench-nat.sh");

#[test]
fn offices_behind_nat_punch_through_and_fall_back_to_the_relay_when_they_cannot() {
    let _serial = serial();
    // Port-preserving NATs: the relayed connection becomes direct, and the payload does not
    // cross the relay.
    let (v, report): (NatReport, String) =
        run_root_script(SCRIPT, &[("NAT", "cone"), ("PAYLOAD_MIB", "2")]);
    eprintln!("cone: {v:?}");
    assert_eq!(v.path, "direct", "{report}");
    assert!(v.hole_punches_ok >= 1, "{report}");
    assert!(v.payload_ok && v.rollout_ok, "{report}");
    assert!(v.relay_ratio < 0.5, "the payload crossed the relay on a direct path:\n{report}");

    // NATs that pick a random port per destination: punching cannot work; the offices stay
    // relayed and the relay carries the payload (in and out: about twice its size).
    let (v, report): (NatReport, String) =
        run_root_script(SCRIPT, &[("NAT", "symmetric"), ("PAYLOAD_MIB", "2")]);
    eprintln!("symmetric: {v:?}");
    assert_eq!(v.path, "relayed", "{report}");
    assert!(v.payload_ok && v.rollout_ok, "{report}");
    assert!(v.relay_ratio >= 1.9, "the payload did not go through the relay:\n{report}");
}
