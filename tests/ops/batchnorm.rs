use crate::common::*;
use densegpu::ops::batchnorm::{kernels::*, BatchNormShape};
use densegpu::reference::batchnorm as reference;

const MOMENTUM: f32 = 0.1;
const EPS: f32 = 1e-5;

/// (c, n, hw): odd channel counts, a single image and a batch, 7x5 and global (1x1) maps.
const SHAPES: &[(u32, u32, u32)] = &[(3, 1, 35), (3, 5, 35), (13, 1, 35), (13, 5, 35), (3, 5, 1), (13, 5, 1)];
/// 65,536 values per channel, for the accuracy of the reductions.
const LARGE: (u32, u32, u32) = (4, 64, 32 * 32);

fn shape((c, n, hw): (u32, u32, u32)) -> BatchNormShape {
    BatchNormShape::new(c, n, hw)
}

fn all_shapes() -> impl Iterator<Item = BatchNormShape> {
    SHAPES.iter().copied().chain([LARGE]).map(shape)
}

/// Activations whose channels have different means and spreads; with `far`, means far from
/// zero against the spread, which a naive one-pass variance would get wrong.
fn activations(s: BatchNormShape, channels: u32, seed: u64, far: bool) -> Vec<f32> {
    let m = s.m() as usize;
    let mut x = random(channels as usize * m, seed);
    for (ch, chunk) in x.chunks_mut(m).enumerate() {
        let scale = 0.5 + 0.3 * ch as f32;
        let offset = if far { 20.0 + ch as f32 } else { 0.4 * ch as f32 - 1.0 };
        chunk.iter_mut().for_each(|v| *v = *v * scale + offset);
    }
    x
}

/// [mean, var] with positive variances.
fn running_values(c: u32, seed: u64) -> Vec<f32> {
    let r = random(2 * c as usize, seed);
    r.iter().enumerate().map(|(i, &v)| if i < c as usize { v } else { v.abs() + 0.5 }).collect()
}

#[track_caller]
fn assert_halves_close(what: &str, c: u32, got: &[f32], want: &[f32]) {
    let c = c as usize;
    assert_close(&format!("{what} (first half)"), &got[..c], &want[..c]);
    assert_close(&format!("{what} (second half)"), &got[c..], &want[c..]);
}

#[test]
fn train_stats_match_reference_and_update_running_like_pytorch() {
    for (k, s) in all_shapes().enumerate() {
        for far in [false, true] {
            let (c, m) = (s.c as usize, s.m() as usize);
            // Two channels more than the batch norm reads: it normalises a channel prefix.
            let x = activations(s, s.c + 2, k as u64, far);
            let running = running_values(s.c, 100 + k as u64);
            let mut slots = Slots::new();
            let (xs, stats, rs) = (slots.input(&x), slots.output(2 * c), slots.input(&running));
            let buf = slots.upload();
            run(&[batchnorm_train_stats(
                gpu(),
                s,
                slots.view(&buf, xs),
                slots.view(&buf, stats),
                slots.view(&buf, rs),
                MOMENTUM,
                EPS,
            )]);
            let (want_stats, want_running) = reference::train_stats(c, m, &x[..c * m], &running, MOMENTUM, EPS);
            let what = format!("{s:?} far={far}");
            assert_halves_close(&format!("train stats {what}"), s.c, &slots.read(&buf, stats), &want_stats);
            assert_halves_close(&format!("running stats {what}"), s.c, &slots.read(&buf, rs), &want_running);
            slots.assert_guards_intact(&buf);
        }
    }
}

#[test]
fn eval_stats_match_reference() {
    for c in [1u32, 3, 13, 300] {
        let running = running_values(c, 7);
        let mut slots = Slots::new();
        let (rs, stats) = (slots.input(&running), slots.output(2 * c as usize));
        let buf = slots.upload();
        run(&[batchnorm_eval_stats(gpu(), c, slots.view(&buf, rs), slots.view(&buf, stats), EPS)]);
        assert_halves_close(
            "eval stats",
            c,
            &slots.read(&buf, stats),
            &reference::eval_stats(c as usize, &running, EPS),
        );
        slots.assert_guards_intact(&buf);
    }
}

#[test]
fn apply_matches_reference() {
    let shapes = all_shapes().chain([shape((13, 1, 1))]);
    for (k, s) in shapes.enumerate() {
        let (c, m) = (s.c as usize, s.m() as usize);
        let x = activations(s, s.c, 10 + k as u64, false);
        // Statistics of another batch (as in eval mode), so y is not merely standardised.
        let stats = reference::eval_stats(c, &running_values(s.c, 20 + k as u64), EPS);
        let affine = random(2 * c, 30 + k as u64);
        for relu in [false, true] {
            let mut slots = Slots::new();
            let (xs, ss, afs, ys) = (slots.input(&x), slots.input(&stats), slots.input(&affine), slots.output(c * m));
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            run(&[batchnorm_apply(gpu(), s, v(xs), v(ss), v(afs), v(ys), relu)]);
            let want = reference::apply(c, m, &x, &stats, &affine, relu);
            assert_close(&format!("apply {s:?} relu={relu}"), &slots.read(&buf, ys), &want);
            slots.assert_guards_intact(&buf);
        }
    }
}

/// A training-mode backward problem: stats are x's own batch statistics.
struct Problem {
    s: BatchNormShape,
    x: Vec<f32>,
    dy: Vec<f32>,
    stats: Vec<f32>,
    affine: Vec<f32>,
}

impl Problem {
    fn new(s: BatchNormShape, seed: u64) -> Problem {
        let (c, m) = (s.c as usize, s.m() as usize);
        let x = activations(s, s.c, seed, false);
        let stats = reference::train_stats(c, m, &x, &vec![0.0; 2 * c], MOMENTUM, EPS).0;
        Problem { s, dy: random(c * m, seed + 1), stats, affine: random(2 * c, seed + 2), x }
    }
    fn c(&self) -> usize {
        self.s.c as usize
    }
    fn m(&self) -> usize {
        self.s.m() as usize
    }
    fn want_affine(&self, relu: bool) -> Vec<f32> {
        reference::backward_affine(self.c(), self.m(), &self.x, &self.dy, &self.stats, &self.affine, relu)
    }
    fn want_dx(&self, relu: bool) -> Vec<f32> {
        reference::backward_input(self.c(), self.m(), &self.x, &self.dy, &self.stats, &self.affine, relu)
    }
}

/// An output slot: NaN when overwritten, random values when accumulated into. Returns the
/// slot and what it held before.
fn output_slot(slots: &mut Slots, len: usize, accumulate: bool, seed: u64) -> (Slot, Vec<f32>) {
    if accumulate {
        let prefill = random(len, seed);
        (slots.input(&prefill), prefill)
    } else {
        (slots.output(len), vec![0.0; len])
    }
}

fn plus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[test]
fn fused_backward_matches_reference() {
    for (k, s) in all_shapes().enumerate() {
        let p = Problem::new(s, 40 + k as u64);
        for relu in [false, true] {
            for (acc_affine, acc_dx) in [(false, false), (true, true), (false, true), (true, false)] {
                let mut slots = Slots::new();
                let (xs, dys, ss, afs) =
                    (slots.input(&p.x), slots.input(&p.dy), slots.input(&p.stats), slots.input(&p.affine));
                let (gs, g0) = output_slot(&mut slots, 2 * p.c(), acc_affine, 50);
                let (dxs, dx0) = output_slot(&mut slots, p.c() * p.m(), acc_dx, 51);
                let buf = slots.upload();
                let v = |slot| slots.view(&buf, slot);
                run(&[batchnorm_backward(
                    gpu(),
                    s,
                    v(xs),
                    v(dys),
                    v(ss),
                    v(afs),
                    v(gs),
                    v(dxs),
                    relu,
                    acc_affine,
                    acc_dx,
                )]);
                let what = format!("{s:?} relu={relu} accumulate=({acc_affine}, {acc_dx})");
                assert_halves_close(
                    &format!("fused backward grad_affine {what}"),
                    s.c,
                    &slots.read(&buf, gs),
                    &plus(&p.want_affine(relu), &g0),
                );
                assert_close(
                    &format!("fused backward dx {what}"),
                    &slots.read(&buf, dxs),
                    &plus(&p.want_dx(relu), &dx0),
                );
                slots.assert_guards_intact(&buf);
            }
        }
    }
}

#[test]
fn split_backward_matches_reference() {
    for (k, s) in all_shapes().enumerate() {
        let p = Problem::new(s, 60 + k as u64);
        for relu in [false, true] {
            for accumulate in [false, true] {
                // backward_affine (overwriting, as backward_input needs) then backward_input.
                let mut slots = Slots::new();
                let (xs, dys, ss, afs) =
                    (slots.input(&p.x), slots.input(&p.dy), slots.input(&p.stats), slots.input(&p.affine));
                let gs = slots.output(2 * p.c());
                let (dxs, dx0) = output_slot(&mut slots, p.c() * p.m(), accumulate, 70);
                let buf = slots.upload();
                let v = |slot| slots.view(&buf, slot);
                run(&[
                    batchnorm_backward_affine(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), relu, false),
                    batchnorm_backward_input(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), v(dxs), relu, accumulate),
                ]);
                let what = format!("{s:?} relu={relu} accumulate={accumulate}");
                assert_halves_close(
                    &format!("backward_affine {what}"),
                    s.c,
                    &slots.read(&buf, gs),
                    &p.want_affine(relu),
                );
                assert_close(&format!("backward_input {what}"), &slots.read(&buf, dxs), &plus(&p.want_dx(relu), &dx0));
                slots.assert_guards_intact(&buf);

                // backward_affine alone, accumulating into a prefilled gradient.
                let mut slots = Slots::new();
                let (xs, dys, ss, afs) =
                    (slots.input(&p.x), slots.input(&p.dy), slots.input(&p.stats), slots.input(&p.affine));
                let (gs, g0) = output_slot(&mut slots, 2 * p.c(), accumulate, 71);
                let buf = slots.upload();
                let v = |slot| slots.view(&buf, slot);
                run(&[batchnorm_backward_affine(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), relu, accumulate)]);
                assert_halves_close(
                    &format!("backward_affine alone {what}"),
                    s.c,
                    &slots.read(&buf, gs),
                    &plus(&p.want_affine(relu), &g0),
                );
                slots.assert_guards_intact(&buf);
            }
        }
    }
}

/// The split backward over a slice of the channels, as the schedule runs it when it takes a
/// batch norm's gradient slice by slice: only the slice's dx and its entries of grad_affine
/// change. In place, dy's slot receives dx.
#[test]
fn backward_over_a_channel_slice_matches_reference() {
    let whole = shape((13, 5, 35));
    let p = Problem::new(whole, 90);
    let m = p.m();
    for (first, c) in [(0u32, 5u32), (4, 5), (10, 3)] {
        let s = whole.slice(first, c);
        let range = first as usize * m..(first + c) as usize * m;
        let (x, dy) = (&p.x[range.clone()], &p.dy[range.clone()]);
        for (relu, in_place) in [(false, false), (true, false), (true, true)] {
            let mut slots = Slots::new();
            let (xs, dys, ss, afs) = (slots.input(x), slots.input(dy), slots.input(&p.stats), slots.input(&p.affine));
            let grad0 = random(2 * p.c(), 91);
            let gs = slots.input(&grad0);
            let dxs = if in_place { dys } else { slots.output(c as usize * m) };
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let input_pass = if in_place {
                batchnorm_backward_input_in_place(gpu(), s, v(xs), v(ss), v(afs), v(gs), v(dxs), relu)
            } else {
                batchnorm_backward_input(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), v(dxs), relu, false)
            };
            run(&[batchnorm_backward_affine(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), relu, false), input_pass]);
            let what = format!("channels {first}+{c} relu={relu} in_place={in_place}");
            let mut want_grad = grad0.clone();
            let want_affine = p.want_affine(relu);
            for ch in first as usize..(first + c) as usize {
                want_grad[ch] = want_affine[ch];
                want_grad[p.c() + ch] = want_affine[p.c() + ch];
            }
            let got_grad = slots.read(&buf, gs);
            assert_halves_close(&format!("grad_affine {what}"), whole.c, &got_grad, &want_grad);
            for (i, (g, w)) in got_grad.iter().zip(&grad0).enumerate() {
                let ch = (i % p.c()) as u32;
                if ch < first || ch >= first + c {
                    assert_eq!(g.to_bits(), w.to_bits(), "{what}: grad_affine {i} outside the slice changed");
                }
            }
            assert_close(&format!("dx {what}"), &slots.read(&buf, dxs), &p.want_dx(relu)[range.clone()]);
            slots.assert_guards_intact(&buf);
        }
    }
}

/// Forward, then backward with the forward's output recomputed from the saved statistics,
/// all on the GPU, against the reference chain. The running statistics move exactly once.
#[test]
fn training_step_with_recompute_matches_reference() {
    let s = shape((13, 5, 35));
    let (c, m) = (13usize, 175usize);
    let x = activations(s, s.c, 80, false);
    let running = running_values(s.c, 81);
    let affine = random(2 * c, 82);
    let dy = random(c * m, 83);
    let mut slots = Slots::new();
    let (xs, rs, afs, dys) = (slots.input(&x), slots.input(&running), slots.input(&affine), slots.input(&dy));
    let (ss, ys, y2s, gs, dxs) =
        (slots.output(2 * c), slots.output(c * m), slots.output(c * m), slots.output(2 * c), slots.output(c * m));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    run(&[
        batchnorm_train_stats(gpu(), s, v(xs), v(ss), v(rs), MOMENTUM, EPS),
        batchnorm_apply(gpu(), s, v(xs), v(ss), v(afs), v(ys), true),
    ]);
    run(&[
        batchnorm_apply(gpu(), s, v(xs), v(ss), v(afs), v(y2s), true),
        batchnorm_backward(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), v(dxs), true, false, false),
    ]);
    let (stats, want_running) = reference::train_stats(c, m, &x, &running, MOMENTUM, EPS);
    let y = slots.read(&buf, ys);
    assert_close("forward y", &y, &reference::apply(c, m, &x, &stats, &affine, true));
    assert_eq!(y, slots.read(&buf, y2s), "the recompute differs from the forward");
    assert_halves_close("running after one step", s.c, &slots.read(&buf, rs), &want_running);
    assert_halves_close(
        "grad_affine",
        s.c,
        &slots.read(&buf, gs),
        &reference::backward_affine(c, m, &x, &dy, &stats, &affine, true),
    );
    assert_close("dx", &slots.read(&buf, dxs), &reference::backward_input(c, m, &x, &dy, &stats, &affine, true));
    slots.assert_guards_intact(&buf);
}

/// Throughput on a realistic layer (64 channels, batch 64, 32x32), against a plain copy of the
/// same size. `cargo test --release --test ops batchnorm_speed -- --ignored --nocapture`
#[test]
#[ignore]
fn batchnorm_speed() {
    let s = shape((64, 64, 32 * 32));
    let (c, len) = (64usize, s.len() as usize);
    let mut slots = Slots::new();
    let (xs, dys, ys, dxs) =
        (slots.input(&random(len, 1)), slots.input(&random(len, 2)), slots.output(len), slots.output(len));
    let (ss, rs, afs, gs) = (
        slots.output(2 * c),
        slots.input(&running_values(s.c, 3)),
        slots.input(&random(2 * c, 4)),
        slots.output(2 * c),
    );
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    let time = |name: &str, d: &dyn Fn() -> densegpu::gpu::Dispatch| {
        let ds: Vec<_> = (0..5).map(|_| d()).collect();
        run(&ds);
        // The best of three: other processes share the CPU that runs the "GPU".
        let ms = (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                run(&ds);
                t.elapsed().as_secs_f64() * 1e3 / 5.0
            })
            .fold(f64::INFINITY, f64::min);
        println!("{name:>16}: {ms:7.2} ms ({:.2} Gvalues/s)", len as f64 / ms / 1e6);
    };
    time("copy", &|| densegpu::ops::elementwise::kernels::copy(gpu(), len as u32, v(xs), v(ys)));
    time("train_stats", &|| batchnorm_train_stats(gpu(), s, v(xs), v(ss), v(rs), MOMENTUM, EPS));
    time("apply+relu", &|| batchnorm_apply(gpu(), s, v(xs), v(ss), v(afs), v(ys), true));
    time("backward fused", &|| {
        batchnorm_backward(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), v(dxs), true, false, true)
    });
    time("backward_affine", &|| batchnorm_backward_affine(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), true, false));
    time("backward_input", &|| {
        batchnorm_backward_input(gpu(), s, v(xs), v(dys), v(ss), v(afs), v(gs), v(dxs), true, true)
    });
}

/// The workgroup family's two-pass reductions at odd shapes and split counts, down to one
/// value per split, through a NaN-poisoned scratch: the statistics, the running update and
/// the affine gradient (overwritten and accumulated, whole and over channel slices, whose
/// entries outside the slice must not change).
#[test]
fn split_reductions_match_reference() {
    for (k, whole) in SHAPES.iter().copied().map(shape).filter(|s| s.m() >= 2).enumerate() {
        let p = Problem::new(whole, 120 + k as u64);
        let (c, m) = (p.c(), p.m());
        for splits in [2, 3, whole.m().min(7), whole.m()] {
            let running = running_values(whole.c, 130 + k as u64);
            let mut slots = Slots::new();
            let (xs, ss, rs) = (slots.input(&p.x), slots.output(2 * c), slots.input(&running));
            let scratch = slots.output(3 * c * splits as usize);
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            run(&batchnorm_train_stats_split(gpu(), whole, v(xs), v(scratch), v(ss), v(rs), splits));
            let (want_stats, want_running) = reference::train_stats(c, m, &p.x, &running, MOMENTUM, EPS);
            let what = format!("{whole:?} {splits} splits");
            assert_halves_close(&format!("split stats {what}"), whole.c, &slots.read(&buf, ss), &want_stats);
            assert_halves_close(&format!("split running {what}"), whole.c, &slots.read(&buf, rs), &want_running);
            slots.assert_guards_intact(&buf);

            for (relu, accumulate) in [(false, false), (true, false), (true, true)] {
                let mut whole_got: Vec<f32> = Vec::new();
                for (first, count) in [(0, whole.c), (whole.c / 3, whole.c - whole.c / 3)] {
                    let s = whole.slice(first, count);
                    let range = first as usize * m..(first + count) as usize * m;
                    let mut slots = Slots::new();
                    let (xs, dys) = (slots.input(&p.x[range.clone()]), slots.input(&p.dy[range.clone()]));
                    let (ss, afs) = (slots.input(&p.stats), slots.input(&p.affine));
                    let grad0 = random(2 * c, 140);
                    let gs = slots.input(&grad0);
                    let scratch = slots.output(2 * c * splits as usize);
                    let buf = slots.upload();
                    let v = |slot| slots.view(&buf, slot);
                    let (x, dy, st, af) = (v(xs), v(dys), v(ss), v(afs));
                    run(&batchnorm_backward_affine_split(
                        gpu(),
                        s,
                        x,
                        dy,
                        st,
                        af,
                        v(gs),
                        v(scratch),
                        relu,
                        accumulate,
                        splits,
                    ));
                    let want_affine = p.want_affine(relu);
                    let mut want = grad0.clone();
                    for ch in (first as usize..(first + count) as usize).flat_map(|ch| [ch, c + ch]) {
                        want[ch] = want_affine[ch] + if accumulate { grad0[ch] } else { 0.0 };
                    }
                    let what = format!("{what} channels {first}+{count} relu={relu} accumulate={accumulate}");
                    let got = slots.read(&buf, gs);
                    assert_halves_close(&format!("split affine {what}"), whole.c, &got, &want);
                    for (i, (g, w)) in got.iter().zip(&grad0).enumerate() {
                        let ch = (i % c) as u32;
                        if ch < first || ch >= first + count {
                            assert_eq!(g.to_bits(), w.to_bits(), "{what}: grad_affine {i} outside the slice changed");
                        } else if !whole_got.is_empty() {
                            // The sums a slice takes are the whole's, bit for bit: what keeps
                            // the memory modes (whole vs sliced) bit-identical.
                            assert_eq!(g.to_bits(), whole_got[i].to_bits(), "{what}: slice differs from whole at {i}");
                        }
                    }
                    slots.assert_guards_intact(&buf);
                    if whole_got.is_empty() {
                        whole_got = got;
                    }
                }
            }
        }
    }
}

#[test]
fn split_counts_depend_on_the_values_per_channel_and_the_scratch_only() {
    let s = BatchNormShape::new(24, 64, 32 * 32);
    assert_eq!(batchnorm_splits(s, 1 << 18), 16, "65,536 values per channel in splits of 4,096");
    assert_eq!(batchnorm_splits(s.slice(5, 7), 1 << 18), 16, "a channel slice splits as the whole");
    assert_eq!(batchnorm_splits(BatchNormShape::new(24, 64, 8 * 8), 1 << 18), 1);
    assert_eq!(batchnorm_splits(s, 3 * 24 * 5), 5, "no more splits than the scratch holds");
    assert_eq!(batchnorm_splits(s, 0), 1);
}
