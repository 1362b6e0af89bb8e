//! The harness every op test uses: one shared device, tensors packed at odd offsets into one
//! buffer the way the arena packs them, NaN-poisoned outputs, and a relative-error check.
#![allow(dead_code)]

use densegpu::gpu::{Dispatch, View};
use densegpu::ops::conv::kernels::ConvKernel;
pub use densegpu::selftest::random;
use densegpu::{block_on, Gpu};
use std::sync::OnceLock;

pub const TOLERANCE: f64 = 1e-4;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| block_on(Gpu::new()).unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}")))
}

/// Whether the exhaustive sweeps run (`cargo xtask test --full` sets DENSEGPU_FULL_TESTS):
/// every candidate at every shape, where CI runs one representative of each case.
pub fn full_tests() -> bool {
    std::env::var_os("DENSEGPU_FULL_TESTS").is_some()
}

/// Every register-family candidate this device can run (the subgroup one needs subgroups), in
/// `REGISTER_TILES` order, the default first.
pub fn register_candidates() -> Vec<ConvKernel> {
    let all = densegpu::ops::conv::wgsl::REGISTER_TILES.iter().map(|t| ConvKernel::Register(*t));
    all.filter(|k| k.fits(gpu())).collect()
}

/// Every conv kernel the tests run, as (forward and input gradient, weight gradient) pairs:
/// each register candidate, and each workgroup candidate (the weight-gradient candidates taken
/// in turn beside the product ones).
pub fn kernel_pairs() -> Vec<(ConvKernel, ConvKernel)> {
    use densegpu::ops::conv::workgroup::{GEMM_TILES, WEIGHT_GRAD_TILES};
    let mut out: Vec<_> = register_candidates().into_iter().map(|k| (k, k)).collect();
    for (i, t) in GEMM_TILES.iter().enumerate() {
        out.push((ConvKernel::Workgroup(*t), ConvKernel::Workgroup(WEIGHT_GRAD_TILES[i % WEIGHT_GRAD_TILES.len()])));
    }
    out
}

/// ‖got − want‖ / ‖want‖, after checking that `got` has no NaN or infinity.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("element {i} of {} is {} (unwritten or overflowed)", got.len(), got[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    assert!(e < TOLERANCE, "{what}: relative error {e:.3e} >= {TOLERANCE:.0e}");
}

/// Tensors packed into one storage buffer the way the arena packs them: each in its own
/// 256-byte-aligned window (so a launch's bindings never alias, as WebGPU requires), at an odd
/// offset inside it, with junk before and after.
#[derive(Default)]
pub struct Slots {
    data: Vec<f32>,
    /// Per slot: window start (elements), offset inside the window, length.
    places: Vec<(usize, u32, usize)>,
}

#[derive(Clone, Copy, Debug)]
pub struct Slot(usize);

/// Elements per window alignment step (256 bytes).
const WINDOW_ALIGN: usize = 64;
/// Junk elements between a window's start and its tensor: an odd offset, which no alignment
/// rule of a kernel may rely on.
const LEAD: usize = 3;
/// The lead of an aligned slot: 16 bytes, where the arena's DenseNet activations start (their
/// channel slices begin at multiples of N·H·W), and where the workgroup family's pointwise
/// convs take vector loads.
const ALIGNED_LEAD: usize = 4;

impl Slots {
    pub fn new() -> Self {
        let mut s = Slots::default();
        s.data.extend(random(3, 999));
        s
    }
    fn push(&mut self, values: &[f32], lead: usize) -> Slot {
        let start = self.data.len().next_multiple_of(WINDOW_ALIGN);
        let junk = start + lead - self.data.len();
        self.data.extend(random(junk, start as u64));
        self.data.extend_from_slice(values);
        self.data.extend(random(5, start as u64 + 1));
        self.places.push((start, lead as u32, values.len()));
        Slot(self.places.len() - 1)
    }
    pub fn input(&mut self, values: &[f32]) -> Slot {
        self.push(values, LEAD)
    }
    /// An input at a 16-byte-aligned offset (see [`ALIGNED_LEAD`]).
    pub fn input_aligned(&mut self, values: &[f32]) -> Slot {
        self.push(values, ALIGNED_LEAD)
    }
    /// An output that the kernel must overwrite completely.
    pub fn output(&mut self, len: usize) -> Slot {
        self.push(&vec![f32::NAN; len], LEAD)
    }
    pub fn upload(&self) -> wgpu::Buffer {
        let g = gpu();
        let buffer = block_on(g.storage_buffer("test slots", self.data.len() as u64 * 4)).unwrap();
        g.write_f32(&buffer, 0, &self.data);
        buffer
    }
    pub fn view<'a>(&self, buffer: &'a wgpu::Buffer, slot: Slot) -> View<'a> {
        let (start, lead, len) = self.places[slot.0];
        View::in_window(buffer, start as u64 * 4, (lead as u64 + len.max(1) as u64) * 4, lead)
    }
    pub fn read(&self, buffer: &wgpu::Buffer, slot: Slot) -> Vec<f32> {
        let (start, lead, len) = self.places[slot.0];
        block_on(gpu().read_f32(buffer, (start + lead as usize) as u64, len)).unwrap()
    }
    /// Checks that the junk around every slot is untouched (no kernel wrote out of bounds).
    pub fn assert_guards_intact(&self, buffer: &wgpu::Buffer) {
        let all = block_on(gpu().read_f32(buffer, 0, self.data.len())).unwrap();
        let mut inside = vec![false; self.data.len()];
        for &(start, lead, len) in &self.places {
            let o = start + lead as usize;
            inside[o..o + len].iter_mut().for_each(|b| *b = true);
        }
        for i in 0..all.len() {
            if !inside[i] {
                assert_eq!(
                    all[i].to_bits(),
                    self.data[i].to_bits(),
                    "element {i} outside every tensor was overwritten"
                );
            }
        }
    }
}

pub fn run(dispatches: &[Dispatch]) {
    block_on(gpu().run(dispatches)).and_then(|()| gpu().wait()).unwrap();
}
