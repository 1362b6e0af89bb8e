//! The step profiler's report: where one training step's time went, launch by launch, as a
//! table grouped by op family, direction and block, and as a Chrome trace (the JSON trace
//! event format that Perfetto and chrome://tracing open).
//!
//! GPU-free: [`crate::Session::profile_train_step`] measures a step and fills a
//! [`StepProfile`]; this module only adds up, formats and writes it. Each launch's device time
//! comes from timestamp queries written at the start and end of a compute pass of its own
//! (see [`crate::gpu::Gpu::run_profiled`]), or, on an adapter without them, from the wall
//! clock around the launch with the device polled to idle.
//!
//! A row's bytes and FLOPs are the minimum its launches must move and compute
//! ([`crate::ops::Work`]), so its GB/s is a lower bound on the traffic it achieved. With the
//! adapter's measured ceiling ([`Peak`], from `bench_ops --peak`), each row also gets its
//! fraction of the roofline: achieved FLOP/s over min(peak FLOP/s, intensity x peak bytes/s)
//! (Williams, Waterman and Patterson, "Roofline", CACM 52(4), 2009).

use crate::ops::Work;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What one schedule launch is, for the report.
#[derive(Clone, Debug)]
pub struct LaunchInfo {
    /// Op family ([`crate::ops::LaunchOp::family`]).
    pub family: &'static str,
    /// `forward`, `recompute`, `backward` or `update`, with the launch's kind
    /// ([`crate::ops::LaunchOp::kind`]), e.g. `backward weight bn-relu` or `recompute apply`.
    pub direction: String,
    /// The model part its node belongs to (see [`block_of`]).
    pub block: String,
    /// Its graph node's name (torchvision's module path), or the family for the optimizer.
    pub node: String,
    /// Its shape, as text, for the trace.
    pub shape: String,
    /// What it must compute and move over the whole batch.
    pub work: Work,
}

/// One dispatch's measured time.
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// Index of its launch in [`StepProfile::launches`] (a launch can record several
    /// dispatches: batch shards, split reductions, the optimizer's segments).
    pub launch: usize,
    /// The kernel's entry point.
    pub entry: &'static str,
    /// The kernel's module: for a conv, its candidate (`register`, `gemm16x64`, ...).
    pub module: &'static str,
    /// Which queue submission it was in (the trace gives each its own track).
    pub submission: usize,
    /// Seconds from the step's first dispatch's start to this one's.
    pub start: f64,
    /// Seconds it ran.
    pub seconds: f64,
}

/// One profiled training step. Every time is in seconds.
#[derive(Clone, Debug, Default)]
pub struct StepProfile {
    /// How launches were timed: `device timestamps` or `wall clock`.
    pub clock: &'static str,
    /// The adapter ([`crate::gpu::Gpu::describe`]).
    pub adapter: String,
    /// What each schedule launch is.
    pub launches: Vec<LaunchInfo>,
    /// Every dispatch, in the order submitted.
    pub dispatches: Vec<DispatchTime>,
    /// From the call to its return.
    pub wall: f64,
    /// Host work before the device could start: writing the batch and the step's
    /// parameters, recording the passes and submitting them.
    pub host: f64,
    /// Waiting for the device to finish the step's work.
    pub wait: f64,
    /// Reading the loss (and the timestamps) back.
    pub readback: f64,
    /// Waiting for the data loader, set by the caller (0 where the batch was at hand).
    pub data_wait: f64,
    /// From the first dispatch's start to the last one's end.
    pub device_span: f64,
    /// The same step run as usual (one pass, one submission) just before, for comparison,
    /// where the caller measured it.
    pub unprofiled_wall: Option<f64>,
}

/// The adapter's measured ceiling: `bench_ops --peak` (see `densegpu::peak`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Bytes per second a WGSL copy kernel moves (read plus written).
    pub bytes_per_second: f64,
    /// FLOPs per second of a WGSL kernel of independent fused multiply-adds (2 FLOPs each).
    pub flops_per_second: f64,
}

/// One row of [`StepProfile::table`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub family: &'static str,
    pub direction: String,
    pub block: String,
    /// Dispatches.
    pub dispatches: usize,
    /// Summed device seconds of its dispatches.
    pub seconds: f64,
    pub work: Work,
}

impl Row {
    /// Bytes moved per second, at least (see [`Work`]).
    pub fn bytes_per_second(&self) -> f64 {
        (self.work.bytes_read + self.work.bytes_written) / self.seconds.max(1e-12)
    }
    pub fn flops_per_second(&self) -> f64 {
        self.work.flops / self.seconds.max(1e-12)
    }
    /// Achieved fraction of the roofline under `peak`: for arithmetic, FLOP/s over
    /// min(peak FLOP/s, intensity x peak bytes/s); for pure data movement, bytes/s over the
    /// peak bytes/s.
    pub fn roofline_fraction(&self, peak: &Peak) -> f64 {
        let bytes = self.work.bytes_read + self.work.bytes_written;
        if self.work.flops == 0.0 {
            return self.bytes_per_second() / peak.bytes_per_second;
        }
        let roof = peak.flops_per_second.min(self.work.flops / bytes.max(1.0) * peak.bytes_per_second);
        self.flops_per_second() / roof
    }
}

/// The part of the model a node belongs to, from its torchvision name: `denseblockK`,
/// `transitionK`, `stem` (`conv0`, `norm0`, `pool0`), `head` (the final norm, pooling,
/// classifier and loss), or `optimizer`.
pub fn block_of(node: &str) -> String {
    let parts: Vec<&str> = node.split('.').collect();
    if let Some(p) = parts.iter().find(|p| p.starts_with("denseblock") || p.starts_with("transition")) {
        return p.to_string();
    }
    match parts.get(1).or(parts.first()).copied().unwrap_or("") {
        "conv0" | "norm0" | "relu0" | "pool0" => "stem".into(),
        "" => "optimizer".into(),
        _ => "head".into(),
    }
}

impl StepProfile {
    /// Summed device seconds of every dispatch.
    pub fn launch_seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }

    /// The rows: dispatches grouped by op family x direction x block, slowest first. A
    /// launch's work counts once, however many dispatches it took.
    pub fn table(&self) -> Vec<Row> {
        let mut rows: BTreeMap<(&'static str, String, String), Row> = BTreeMap::new();
        let mut counted = vec![false; self.launches.len()];
        for d in &self.dispatches {
            let l = &self.launches[d.launch];
            let key = (l.family, l.direction.clone(), l.block.clone());
            let row = rows.entry(key).or_insert_with(|| Row {
                family: l.family,
                direction: l.direction.clone(),
                block: l.block.clone(),
                ..Row::default()
            });
            row.dispatches += 1;
            row.seconds += d.seconds;
            if !std::mem::replace(&mut counted[d.launch], true) {
                row.work = row.work + l.work;
            }
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    /// The rows of [`StepProfile::table`] added up per op family, slowest first (the
    /// roofline's view).
    pub fn families(&self) -> Vec<Row> {
        let mut rows: BTreeMap<&'static str, Row> = BTreeMap::new();
        for r in self.table() {
            let row = rows.entry(r.family).or_insert_with(|| Row { family: r.family, ..Row::default() });
            row.dispatches += r.dispatches;
            row.seconds += r.seconds;
            row.work = row.work + r.work;
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    /// The report printed at the end of a profiled run: the step's wall time split, then the
    /// table (with roofline fractions where `peak` is known), then the per-family totals.
    pub fn report(&self, peak: Option<&Peak>) -> String {
        let mut out = String::new();
        let launches = self.launch_seconds();
        let ms = |s: f64| s * 1e3;
        let _ = writeln!(out, "Step profile on {} (launches timed by {})", self.adapter, self.clock);
        if let Some(u) = self.unprofiled_wall {
            let _ = writeln!(out, "  the same step unprofiled:   {:>10.1} ms", ms(u));
        }
        let _ = writeln!(out, "  wall time of this step:     {:>10.1} ms", ms(self.wall));
        let _ = writeln!(out, "    host (write, record, submit) {:>7.1} ms", ms(self.host));
        let _ = writeln!(
            out,
            "    device, first launch to last {:>7.1} ms ({:.1} ms in launches, {:.1} ms between them)",
            ms(self.device_span),
            ms(launches),
            ms(self.device_span - launches)
        );
        let _ =
            writeln!(out, "    waiting beyond that          {:>7.1} ms", ms((self.wait - self.device_span).max(0.0)));
        let _ = writeln!(out, "    readbacks                    {:>7.1} ms", ms(self.readback));
        let _ = writeln!(out, "    data wait                    {:>7.1} ms", ms(self.data_wait));
        let header = |out: &mut String, first: &str| {
            let roof = if peak.is_some() { "  roofline" } else { "" };
            let _ = writeln!(
                out,
                "{first:<60} {:>6} {:>10} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9}{roof}",
                "launch", "ms", "share", "MB read", "MB write", "GFLOP", "GB/s", "GFLOP/s"
            );
        };
        let line = |out: &mut String, name: String, r: &Row| {
            let roof = peak.map(|p| format!("  {:>7.1}%", 100.0 * r.roofline_fraction(p))).unwrap_or_default();
            let _ = writeln!(
                out,
                "{name:<60} {:>6} {:>10.1} {:>5.1}% {:>9.1} {:>9.1} {:>9.2} {:>8.2} {:>9.2}{roof}",
                r.dispatches,
                ms(r.seconds),
                100.0 * r.seconds / launches.max(1e-12),
                r.work.bytes_read / 1e6,
                r.work.bytes_written / 1e6,
                r.work.flops / 1e9,
                r.bytes_per_second() / 1e9,
                r.flops_per_second() / 1e9,
            );
        };
        let _ = writeln!(out);
        header(&mut out, "family / direction / block");
        for r in self.table() {
            line(&mut out, format!("{} / {} / {}", r.family, r.direction, r.block), &r);
        }
        let _ = writeln!(out);
        header(&mut out, "family");
        for r in self.families() {
            line(&mut out, r.family.to_string(), &r);
        }
        if let Some(p) = peak {
            let _ = writeln!(
                out,
                "roofline: {:.2} GB/s copy, {:.2} GFLOP/s FMA (bench_ops --peak on this adapter)",
                p.bytes_per_second / 1e9,
                p.flops_per_second / 1e9
            );
        }
        out
    }

    /// The step as a Chrome trace (JSON trace event format, `traceEvents` with complete `X`
    /// events in microseconds): the device's launches in process 1, one track (thread) per
    /// queue submission, one slice per dispatch with its node, shape, kernel and work as
    /// arguments; the host's phases in process 2.
    pub fn chrome_trace(&self) -> serde_json::Value {
        use serde_json::json;
        let us = |s: f64| s * 1e6;
        let mut events = vec![
            json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": format!("device: {}", self.adapter)}}),
            json!({"name": "process_name", "ph": "M", "pid": 2, "tid": 0, "args": {"name": "host"}}),
        ];
        let submissions = self.dispatches.iter().map(|d| d.submission + 1).max().unwrap_or(0);
        for s in 0..submissions {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": s, "args": {"name": format!("queue submission {s}")}}));
        }
        // The host's track starts with the data wait. The device's clock has its own origin:
        // its track starts where the host had submitted, which is when the device could start.
        let origin = self.data_wait + self.host;
        for d in &self.dispatches {
            let l = &self.launches[d.launch];
            events.push(json!({
                "name": format!("{} {}", l.family, l.direction),
                "cat": l.family,
                "ph": "X",
                "pid": 1,
                "tid": d.submission,
                "ts": us(origin + d.start),
                "dur": us(d.seconds),
                "args": {
                    "node": l.node,
                    "block": l.block,
                    "shape": l.shape,
                    "entry": d.entry,
                    "kernel": d.module,
                    "flops": l.work.flops,
                    "bytes_read": l.work.bytes_read,
                    "bytes_written": l.work.bytes_written,
                },
            }));
        }
        let mut at = 0.0;
        events.push(json!({"name": "thread_name", "ph": "M", "pid": 2, "tid": 0, "args": {"name": "step"}}));
        for (name, seconds) in [
            ("data wait", self.data_wait),
            ("host: write, record, submit", self.host),
            ("wait for the device", self.wait),
            ("readback", self.readback),
        ] {
            events.push(
                json!({"name": name, "cat": "host", "ph": "X", "pid": 2, "tid": 0, "ts": us(at), "dur": us(seconds)}),
            );
            at += seconds;
        }
        json!({
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"adapter": self.adapter, "clock": self.clock, "wall_seconds": self.wall},
        })
    }
}
