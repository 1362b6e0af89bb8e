//! The autotune's race (`densegpu::tune::race` and `choose`), without a device: candidates are
//! stand-ins that report set times for each launch, such as a slow first launch where a
//! driver compiles the pipeline (lavapipe, browsers). Set times, not sleeps, so the rules are
//! tested exactly, on a loaded machine too.

use densegpu::tune::{choose, race, Launch, Timing};
use std::cell::RefCell;

/// Runs a race of stand-ins: candidate `i`'s `k`-th launch (the warm-up is launch 0) takes
/// `millis[i][k]` milliseconds (the last entry repeats). Returns the timings and every call
/// made, in order.
fn race_stand_ins(names: &[&'static str], millis: &[&[u64]]) -> (Vec<Timing>, Vec<(usize, Launch)>) {
    race_with_twins(names, &[], millis)
}

/// As [`race_stand_ins`], with `twins` for [`race`].
fn race_with_twins(
    names: &[&'static str],
    twins: &[Option<usize>],
    millis: &[&[u64]],
) -> (Vec<Timing>, Vec<(usize, Launch)>) {
    let calls = RefCell::new(Vec::new());
    let timings = densegpu::block_on(race(names, twins, async |i, what| {
        let k = calls.borrow().iter().filter(|(j, _)| *j == i).count();
        calls.borrow_mut().push((i, what));
        Ok(millis[i][k.min(millis[i].len() - 1)] as f64 / 1e3)
    }))
    .expect("stand-ins never fail");
    (timings, calls.into_inner())
}

#[test]
fn a_candidate_whose_first_launch_compiles_is_still_chosen_when_it_is_fastest() {
    // `register`'s first launch "compiles" for 400 ms, then it runs in 20 ms; `gemm16x64` runs
    // in 80 ms from the start. The old tuner timed `register`'s first launch (61 s against
    // 1.3 s in the log) and chose `gemm16x64`.
    let names = ["register", "gemm16x64"];
    let (timings, calls) = race_stand_ins(&names, &[&[400, 20], &[80]]);
    assert_eq!(choose("register", &timings), "register", "{timings:?}");
    // Also when the slow candidate is not the default: the margin does not save it.
    assert_eq!(choose("gemm16x64", &timings), "register", "{timings:?}");
    assert!(timings[0].seconds < 0.2, "the compile was counted: {timings:?}");
    // Each candidate's first call is its untimed warm-up.
    for i in 0..names.len() {
        let first = calls.iter().find(|(j, _)| *j == i).map(|c| c.1);
        assert_eq!(first, Some(Launch::WarmUp), "candidate {i}: {calls:?}");
        let warm_ups = calls.iter().filter(|c| **c == (i, Launch::WarmUp)).count();
        assert_eq!(warm_ups, 1, "candidate {i}: {calls:?}");
    }
}

#[test]
fn a_slow_launch_after_the_warm_up_is_outvoted_by_two_more() {
    // A neighbour steals the CPU during `register`'s first timed launch (300 ms instead of
    // 20): the two timed launches disagree, a third is timed, and the minimum stands.
    let (timings, _) = race_stand_ins(&["register", "register-wide"], &[&[0, 300, 20], &[60]]);
    assert_eq!(timings[0].launches.len(), 3, "{timings:?}");
    assert!(timings[0].seconds < 0.2, "{timings:?}");
    assert_eq!(choose("register", &timings), "register");
}

#[test]
fn every_time_that_can_win_rests_on_two_timed_launches_at_least() {
    // Agreeing launches settle in two; a hopeless candidate (both launches over twice the best)
    // stops at two; a close one that disagrees takes three; one whose first timed launch takes
    // over four times the best (twice what a busy neighbour can add to a hopeless one) stops
    // at one.
    let names = ["a", "b", "c", "d"];
    let (timings, calls) = race_stand_ins(&names, &[&[0, 30], &[0, 100, 120], &[0, 40, 55, 40], &[0, 130, 10]]);
    let counts: Vec<usize> = timings.iter().map(|t| t.launches.len()).collect();
    assert_eq!(counts, [2, 2, 3, 1], "{timings:?}");
    for (i, t) in timings.iter().enumerate() {
        let timed = calls.iter().filter(|c| **c == (i, Launch::Timed)).count();
        assert_eq!(timed, t.launches.len());
        let min = t.launches.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(t.seconds, min, "a time is the fastest of its launches");
    }
    assert_eq!(choose("b", &timings), "a");
}

#[test]
fn the_default_keeps_a_race_within_the_margin() {
    let timing = |candidate, seconds| Timing {
        candidate,
        seconds,
        launches: vec![seconds, seconds],
        warm_up: 0.0,
        same_as: None,
    };
    let timings = [timing("register", 1.05), timing("register-wide", 1.0)];
    assert_eq!(choose("register", &timings), "register");
    let timings = [timing("register", 1.2), timing("register-wide", 1.0)];
    assert_eq!(choose("register", &timings), "register-wide");
}

#[test]
fn a_twin_takes_the_timing_of_the_kernel_it_shares() {
    // `register-wide` launches the same kernel as `register` here: it is not run, and its
    // timing is `register`'s, so the default keeps the choice.
    let names = ["register", "register-wide", "gemm16x64"];
    let (timings, calls) = race_with_twins(&names, &[None, Some(0), None], &[&[500, 20], &[1, 1], &[0, 80]]);
    assert!(calls.iter().all(|c| c.0 != 1), "the twin ran: {calls:?}");
    assert_eq!(timings[1].same_as, Some("register"));
    assert_eq!((timings[1].seconds, &timings[1].launches), (timings[0].seconds, &timings[0].launches));
    assert_eq!(choose("register", &timings), "register");
}

#[test]
fn same_kernel_follows_the_generated_text() {
    use densegpu::ops::conv::wgsl::{ConvTiles, REGISTER_TILES};
    // The text of each entry point in a candidate's module, comments left out.
    fn entry_text(module: &str, entry: &str) -> String {
        let start = module.find(&format!("\nfn {entry}(")).unwrap_or_else(|| panic!("no {entry}"));
        let start = module[..start].rfind("@compute").unwrap();
        let end = module[start + 8..].find("@compute").map_or(module.len(), |e| start + 8 + e);
        module[start..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    }
    let entries = [
        "conv1x1_gemm",
        "conv1x1_gemm_bnrelu",
        "conv3x3_s1",
        "conv3x3_s1_narrow",
        "conv1x1_weight_grad",
        "conv1x1_weight_grad_bnrelu",
        "conv3x3_s1_weight_grad",
        "conv_general_forward",
    ];
    let base = REGISTER_TILES[0];
    let mut candidates = REGISTER_TILES.to_vec();
    candidates.push(ConvTiles { conv3_lines: 4, ..base });
    candidates.push(ConvTiles { conv3_narrow_lines: 8, ..base });
    candidates.push(ConvTiles { wgrad3_rows: 4, ..base });
    candidates.push(ConvTiles { wgrad3_cols: 3, ..base });
    candidates.push(ConvTiles { wgrad1_cols: 8, ..base });
    candidates.push(ConvTiles { conv3_workgroup: 32, ..base });
    let texts: Vec<String> = candidates.iter().map(|t| t.wgsl()).collect();
    let mut both = 0;
    for entry in entries {
        for (a, ta) in candidates.iter().zip(&texts) {
            for (b, tb) in candidates.iter().zip(&texts) {
                let same = entry_text(ta, entry) == entry_text(tb, entry);
                assert_eq!(a.same_kernel(b, entry), same, "{entry}: {a:?} and {b:?}");
                both += (same && a != b) as usize;
            }
        }
    }
    assert!(both > 0, "no two different candidates share a kernel: the check checked nothing");
    assert!(!base.same_kernel(&base, "not_an_entry"));
}
