//! Tests of the arena memory planner. The checks below recompute everything from the requests
//! by brute force, independently of the planner's own data structures.

use std::time::Instant;

use densegpu::memory::arena::{
    layout_arena, layout_arena_with, peak_live_bytes, ArenaLayout, ArenaLimits, ArenaRequest, Category, MemoryReport,
    Placement, Strategy as Heuristic,
};
use densegpu::Error;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const HUGE: u64 = 1 << 40;

fn aligned(bytes: u64, alignment: u64) -> u64 {
    bytes.div_ceil(alignment) * alignment
}

fn limits(max_buffer_bytes: u64, alignment: u64) -> ArenaLimits {
    ArenaLimits { max_buffer_bytes, alignment }
}

/// Every property a plan must have, checked pairwise. Returns a description of the first
/// violation so proptest can shrink on it.
fn check_plan(requests: &[ArenaRequest], lim: &ArenaLimits, plan: &ArenaLayout) -> Result<(), String> {
    let a = lim.alignment;
    if plan.placements.len() != requests.len() {
        return Err(format!("{} placements for {} requests", plan.placements.len(), requests.len()));
    }
    for (b, &bytes) in plan.buffer_bytes.iter().enumerate() {
        if bytes > lim.max_buffer_bytes || bytes % a != 0 || bytes == 0 {
            return Err(format!("buffer {b} has {bytes} bytes (limit {}, alignment {a})", lim.max_buffer_bytes));
        }
    }
    if plan.total_bytes() != plan.buffer_bytes.iter().sum::<u64>() || plan.report().total != plan.total_bytes() {
        return Err("total_bytes / report.total disagree with the buffers".into());
    }
    let peak = peak_live_bytes(requests, a);
    if plan.total_bytes() < peak {
        return Err(format!("total {} below peak live {peak}", plan.total_bytes()));
    }
    // Tensors that really occupy memory, grouped by buffer.
    let mut by_buffer: Vec<Vec<usize>> = vec![Vec::new(); plan.buffer_bytes.len()];
    for (i, (r, p)) in requests.iter().zip(&plan.placements).enumerate() {
        if r.bytes == 0 {
            continue;
        }
        let size = aligned(r.bytes, a);
        if p.buffer >= plan.buffer_bytes.len() {
            return Err(format!("tensor {i} in missing buffer {}", p.buffer));
        }
        if p.offset % a != 0 {
            return Err(format!("tensor {i} at unaligned offset {}", p.offset));
        }
        if p.offset + size > plan.buffer_bytes[p.buffer] {
            return Err(format!("tensor {i} [{}, {}) outside buffer {}", p.offset, p.offset + size, p.buffer));
        }
        by_buffer[p.buffer].push(i);
    }
    for group in &by_buffer {
        for (x, &i) in group.iter().enumerate() {
            for &j in &group[x + 1..] {
                let (ri, rj) = (&requests[i], &requests[j]);
                let alive_together = ri.first_use <= rj.last_use && rj.first_use <= ri.last_use;
                let (pi, pj) = (plan.placements[i], plan.placements[j]);
                let disjoint =
                    pi.offset + aligned(ri.bytes, a) <= pj.offset || pj.offset + aligned(rj.bytes, a) <= pi.offset;
                if alive_together && !disjoint {
                    return Err(format!("tensors {i} {ri:?} at {pi:?} and {j} {rj:?} at {pj:?} overlap"));
                }
            }
        }
    }
    Ok(())
}

const CATEGORIES: [Category; 5] =
    [Category::Parameters, Category::Gradients, Category::Optimizer, Category::Activations, Category::Workspace];

/// Random lifetimes and sizes: odd sizes, zero sizes, persistent tensors, clumps of equal
/// lifetimes, a few long lifetimes crossing many short ones.
fn arbitrary_requests(max_tensors: usize, max_bytes: u64) -> impl Strategy<Value = Vec<ArenaRequest>> {
    let tensor =
        (0usize..60, prop_oneof![3 => 0usize..4, 2 => 0usize..30, 1 => Just(1000)], 0..=max_bytes, 0usize..5, 0u8..10);
    prop::collection::vec(tensor, 0..max_tensors).prop_map(|tensors| {
        tensors
            .into_iter()
            .enumerate()
            .map(|(i, (first, len, bytes, cat, flavour))| {
                let (first, last) = if flavour == 0 { (0, 70) } else { (first, (first + len).min(70)) };
                let bytes = if flavour == 1 { 0 } else { bytes };
                ArenaRequest::new(format!("t{i}"), bytes, first, last, CATEGORIES[cat])
            })
            .collect()
    })
}

/// Properly nested lifetimes: a random sequence of pushes and pops on a stack, each tensor living
/// from its push step to its pop step, plus some tensors spanning the whole schedule.
fn nested_requests() -> impl Strategy<Value = Vec<ArenaRequest>> {
    let op = (any::<bool>(), 0usize..3, 0u64..5000);
    (prop::collection::vec(op, 0..300), prop::collection::vec(1u64..3000, 0..4)).prop_map(|(ops, persistent)| {
        let mut step = 0;
        let mut stack: Vec<ArenaRequest> = Vec::new();
        let mut done = Vec::new();
        let mut last_was_pop = false;
        for (i, (push, advance, bytes)) in ops.into_iter().enumerate() {
            step += advance;
            if push {
                // A push right after a pop at the same step would make two touching lifetimes
                // that are neither nested nor disjoint.
                if last_was_pop && advance == 0 {
                    step += 1;
                }
                stack.push(ArenaRequest::new(format!("n{i}"), bytes, step, step, Category::Activations));
            } else if let Some(mut t) = stack.pop() {
                t.last_use = step;
                done.push(t);
            }
            last_was_pop = !push;
        }
        while let Some(mut t) = stack.pop() {
            step += 1;
            t.last_use = step;
            done.push(t);
        }
        for (i, bytes) in persistent.into_iter().enumerate() {
            done.push(ArenaRequest::new(format!("p{i}"), bytes, 0, step, Category::Parameters));
        }
        done
    })
}

fn alignments() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(3), Just(4), Just(16), Just(256)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_valid_for_arbitrary_lifetimes(
        requests in arbitrary_requests(250, 5000),
        alignment in alignments(),
        limit_factor in prop_oneof![Just(None), (1u64..6).prop_map(Some)],
    ) {
        let biggest = requests.iter().map(|r| aligned(r.bytes, alignment)).max().unwrap_or(0).max(alignment);
        let lim = limits(limit_factor.map_or(HUGE, |k| biggest * k + alignment / 2), alignment);
        let plan = layout_arena(&requests, &lim).unwrap();
        prop_assert_eq!(check_plan(&requests, &lim, &plan), Ok(()));
        // The planner keeps the best of its strategies, and each of them is valid on its own.
        let mut totals = Vec::new();
        for strategy in Heuristic::ALL {
            let alone = layout_arena_with(&requests, &lim, strategy).unwrap();
            prop_assert_eq!(check_plan(&requests, &lim, &alone), Ok(()), "{:?}", strategy);
            totals.push(alone.total_bytes());
        }
        prop_assert_eq!(plan.total_bytes(), *totals.iter().min().unwrap());
        // Zero-byte tensors take no space and get the documented placement.
        for (r, p) in requests.iter().zip(&plan.placements) {
            if r.bytes == 0 {
                prop_assert_eq!(*p, Placement { buffer: 0, offset: 0 });
            }
        }
    }

    #[test]
    fn nested_lifetimes_reach_the_peak_exactly(requests in nested_requests(), alignment in alignments()) {
        let peak = peak_live_bytes(&requests, alignment);
        let lim = limits(HUGE, alignment);
        let plan = layout_arena(&requests, &lim).unwrap();
        prop_assert_eq!(check_plan(&requests, &lim, &plan), Ok(()));
        prop_assert_eq!(plan.total_bytes(), peak);
        prop_assert!(plan.buffer_bytes.len() <= 1);
        // Even with a buffer limit of exactly the peak, it all fits in one buffer.
        if peak > 0 {
            let tight = limits(peak, alignment);
            let plan = layout_arena_with(&requests, &tight, Heuristic::FirstFitByStart).unwrap();
            prop_assert_eq!(check_plan(&requests, &tight, &plan), Ok(()));
            prop_assert_eq!(plan.buffer_bytes, vec![peak]);
        }
    }

    #[test]
    fn small_limit_splits_the_arena(requests in arbitrary_requests(200, 4080), alignment in alignments()) {
        let lim = limits(4096, alignment);
        let plan = layout_arena(&requests, &lim).unwrap();
        prop_assert_eq!(check_plan(&requests, &lim, &plan), Ok(()));
        // The limit forces at least this many buffers.
        let peak = peak_live_bytes(&requests, alignment);
        prop_assert!(plan.buffer_bytes.len() as u64 >= peak.div_ceil(4096 / alignment * alignment));
    }
}

#[test]
fn peak_live_bytes_counts_inclusive_aligned_lifetimes() {
    let t = |bytes, first, last| ArenaRequest::new("t", bytes, first, last, Category::Workspace);
    // Touching lifetimes ([0,2] and [2,3]) overlap at step 2; 100 bytes round up to 256.
    let requests = [t(100, 0, 2), t(300, 2, 3), t(500, 4, 4), t(0, 0, 9)];
    assert_eq!(peak_live_bytes(&requests, 256), 256 + 512);
    assert_eq!(peak_live_bytes(&requests, 1), 500);
    assert_eq!(peak_live_bytes(&[], 256), 0);
}

#[test]
fn split_over_buffers_with_a_4_kib_limit() {
    let lim = limits(4096, 256);
    let t = |name: &str, bytes, first, last| ArenaRequest::new(name, bytes, first, last, Category::Activations);
    // Three 2 KiB tensors alive together plus one exactly at the limit later on.
    let requests = [t("a", 2048, 0, 3), t("b", 2000, 1, 3), t("c", 1900, 2, 3), t("d", 4096, 4, 5)];
    let plan = layout_arena(&requests, &lim).unwrap();
    check_plan(&requests, &lim, &plan).unwrap();
    assert_eq!(plan.buffer_bytes.len(), 2, "{plan:?}");
    assert!(plan.buffer_bytes.iter().all(|&b| b <= 4096));
    assert_eq!(plan.total_bytes(), 4096 + 2048);
    let buffers_of_abc: Vec<usize> = plan.placements[..3].iter().map(|p| p.buffer).collect();
    assert!(buffers_of_abc.contains(&0) && buffers_of_abc.contains(&1));
}

#[test]
fn tensor_above_the_limit_is_too_large() {
    let requests = [
        ArenaRequest::new("stem.conv.weight", 1000, 0, 9, Category::Parameters),
        ArenaRequest::new("block3.concat", 5000, 2, 4, Category::Activations),
    ];
    match layout_arena(&requests, &limits(4096, 256)) {
        Err(Error::TooLarge(message)) => {
            assert!(message.contains("block3.concat"), "{message}");
            assert!(message.contains("5000"), "{message}");
            assert!(message.contains("4096"), "{message}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // 4000 bytes fit a 4000-byte limit only without alignment: 256-byte alignment rounds them to
    // 4096, and the usable part of the buffer down to 3840.
    let fits = [ArenaRequest::new("x", 4000, 0, 0, Category::Workspace)];
    assert_eq!(layout_arena(&fits, &limits(4000, 1)).unwrap().buffer_bytes, vec![4000]);
    assert!(matches!(layout_arena(&fits, &limits(4000, 256)), Err(Error::TooLarge(_))));
}

#[test]
fn bad_requests_are_config_errors() {
    let backwards = [ArenaRequest::new("grad.tmp", 64, 5, 4, Category::Workspace)];
    match layout_arena(&backwards, &limits(HUGE, 4)) {
        Err(Error::Config(message)) => assert!(message.contains("grad.tmp"), "{message}"),
        other => panic!("expected Config, got {other:?}"),
    }
    let fine = [ArenaRequest::new("x", 64, 0, 1, Category::Workspace)];
    assert!(matches!(layout_arena(&fine, &limits(HUGE, 0)), Err(Error::Config(_))));
}

#[test]
fn empty_and_zero_byte_requests_make_an_empty_arena() {
    let plan = layout_arena(&[], &limits(HUGE, 256)).unwrap();
    assert!(plan.buffer_bytes.is_empty() && plan.placements.is_empty());
    let zeros = vec![ArenaRequest::new("z", 0, 0, 3, Category::Workspace); 3];
    let plan = layout_arena(&zeros, &limits(HUGE, 256)).unwrap();
    assert_eq!(plan.total_bytes(), 0);
    assert_eq!(plan.placements, vec![Placement { buffer: 0, offset: 0 }; 3]);
    assert_eq!(plan.report(), MemoryReport::default());
}

/// A hand-made schedule: steps 0..=9, persistent weights, stored activations, scratch.
fn small_network() -> Vec<ArenaRequest> {
    use Category::*;
    let t = ArenaRequest::new;
    vec![
        t("w1", 1000, 0, 9, Parameters),  // 1024 aligned
        t("w2", 100, 0, 9, Parameters),   // 256
        t("g1", 1024, 0, 9, Gradients),   // 1024
        t("m1", 1024, 0, 9, Optimizer),   // 1024
        t("a1", 2000, 1, 8, Activations), // 2048
        t("a2", 3000, 2, 7, Activations), // 3072
        t("a3", 512, 3, 4, Activations),  // 512
        t("s1", 4096, 2, 2, Workspace),   // 4096
        t("s2", 100, 5, 6, Workspace),    // 256
        t("s3", 8192, 8, 9, Workspace),   // 8192, crosses a1 at step 8
    ]
}

#[test]
fn report_of_a_small_network() {
    let requests = small_network();
    let lim = limits(HUGE, 256);
    let plan = layout_arena(&requests, &lim).unwrap();
    check_plan(&requests, &lim, &plan).unwrap();
    let report = plan.report();
    // Persistent 3328 bytes; busiest step is 8: a1 + s3 on top of them.
    let expected = MemoryReport {
        parameters: 1024 + 256,
        gradients: 1024,
        optimizer: 1024,
        activations: 2048 + 3072 + 512,
        workspace: 8192,
        peak_live: 3328 + 2048 + 8192,
        total: 3328 + 2048 + 8192,
    };
    assert_eq!(report, expected);
    // Persistent tensors are packed at the bottom of the arena.
    let mut persistent: Vec<u64> = plan.placements[..4].iter().map(|p| p.offset).collect();
    persistent.sort_unstable();
    assert_eq!(persistent, vec![0, 1024, 2048, 3072]);

    let table = report.to_string();
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(table.lines().any(|l| l.starts_with("activations") && l.ends_with(" 5632")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("arena total") && l.contains("0.01") && l.ends_with(" 13568")));
}

#[test]
fn greedy_by_size_wins_where_the_sweep_fragments() {
    // t1 dies at step 1 under t2, which lives on; the 2-byte t3 then cannot use t1's hole.
    let t = |name: &str, bytes, first, last| ArenaRequest::new(name, bytes, first, last, Category::Workspace);
    let requests = [t("t1", 1, 0, 1), t("t2", 1, 1, 5), t("t3", 2, 2, 3)];
    let lim = limits(HUGE, 1);
    assert_eq!(peak_live_bytes(&requests, 1), 3);
    assert_eq!(layout_arena_with(&requests, &lim, Heuristic::FirstFitByStart).unwrap().total_bytes(), 4);
    assert_eq!(layout_arena_with(&requests, &lim, Heuristic::BestFitByStart).unwrap().total_bytes(), 4);
    let plan = layout_arena(&requests, &lim).unwrap();
    check_plan(&requests, &lim, &plan).unwrap();
    assert_eq!(plan.total_bytes(), 3);
    assert_eq!(plan.strategy, Heuristic::GreedyBySize);
}

/// A DenseNet-like schedule: persistent parameters/gradients/optimizer state, activations
/// stored from forward step k to backward step 2S-k (nested), short-lived workspace around every
/// step, and a sprinkling of crossing lifetimes.
fn densenet_like(n: usize, seed: u64) -> Vec<ArenaRequest> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let steps = n / 4;
    let last = 2 * steps;
    (0..n)
        .map(|i| {
            let bytes = rng.random_range(1..(1u64 << 20));
            match i % 10 {
                0 | 1 => ArenaRequest::new(format!("p{i}"), bytes, 0, last, Category::Parameters),
                2 | 3 => {
                    let k = rng.random_range(0..steps);
                    ArenaRequest::new(format!("a{i}"), bytes, k, last - k, Category::Activations)
                }
                4 => {
                    let first = rng.random_range(0..last);
                    let end = (first + rng.random_range(0..50)).min(last);
                    ArenaRequest::new(format!("x{i}"), bytes, first, end, Category::Workspace)
                }
                _ => {
                    let first = rng.random_range(0..last);
                    let end = (first + rng.random_range(0..3)).min(last);
                    ArenaRequest::new(format!("w{i}"), bytes, first, end, Category::Workspace)
                }
            }
        })
        .collect()
}

/// Uniformly random lifetimes anywhere in the schedule: thousands of crossing conflicts per tensor.
fn adversarial(n: usize, seed: u64) -> Vec<ArenaRequest> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (a, b) = (rng.random_range(0..5000usize), rng.random_range(0..5000usize));
            ArenaRequest::new(format!("r{i}"), rng.random_range(1..100_000), a.min(b), a.max(b), Category::Workspace)
        })
        .collect()
}

/// 10,000 tensors still get every strategy; 20,000 exceed the greedy ones' work limit. Both
/// get valid plans. The time is printed, not asserted: speed belongs to benchmarks
/// (`cargo test --release --test plan thousand -- --nocapture` shows it).
#[test]
fn twenty_thousand_tensors_get_valid_plans() {
    for n in [10_000, 20_000] {
        for (label, requests) in [("densenet-like", densenet_like(n, 7)), ("adversarial", adversarial(n, 8))] {
            let lim = limits(128 << 20, 256);
            let start = Instant::now();
            let plan = layout_arena(&requests, &lim).unwrap();
            let elapsed = start.elapsed();
            let peak = peak_live_bytes(&requests, 256);
            eprintln!(
                "{label}: {n} tensors planned in {elapsed:?} by {:?}: {} buffers, total {} vs peak {peak} (+{:.2}%)",
                plan.strategy,
                plan.buffer_bytes.len(),
                plan.total_bytes(),
                (plan.total_bytes() as f64 / peak as f64 - 1.0) * 100.0
            );
            check_plan(&requests, &lim, &plan).unwrap();
        }
    }
}
