//! Trains DenseNet-BC on CIFAR-10 (or on a built-in synthetic set when no data is given) with
//! the reference recipe: SGD with Nesterov momentum, step decay at 50% and 75% of the run,
//! random crop and flip, a validation split, and the best-validation weights tested at the end.
//!
//!     cargo run --release --example train_cifar                        # a short synthetic run
//!     cargo run --release --example train_cifar -- --data DIR --epochs 300 --save runs/bc100
//!     cargo run --release --example train_cifar -- --resume runs/bc100    # after a crash
//!
//! `--resume DIR` goes on with the run saved in DIR: its model, flags (see [`DEFINING`]) and
//! data settings come from the checkpoint, and it keeps saving into DIR.

#[path = "cli/resume.rs"]
mod resume;

use clap::Parser;
use densegpu::checkpoint::{self, TrainingState};
use densegpu::data::{self, BatchLoader, LoaderOptions, TrainTest};
use densegpu::densenet::{plan_training, DenseNetConfig, MemoryMode};
use densegpu::run::SavedRun;
use densegpu::run::{self, RunFiles};
use densegpu::trainer::{LrSchedule, Trainer};
use densegpu::{block_on, Error, Gpu, Pass, Result, Session, SgdHyper};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Train a DenseNet on CIFAR-10 with densegpu")]
struct Args {
    /// CIFAR-10 as binary batches or as DIR/{train,test}/<class>/* images. Without it, a
    /// built-in synthetic 10-class set is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Download the official CIFAR-10 binary archive into DIR (checksum verified) and use it.
    #[arg(long, value_name = "DIR")]
    download: Option<PathBuf>,
    /// DenseNet-BC depth (6n+4). Default 100, or 22 on the synthetic set (or, with --init and no
    /// architecture flag, the architecture of the --init file).
    #[arg(long)]
    depth: Option<u32>,
    /// Growth rate k. Default 12.
    #[arg(long)]
    growth_rate: Option<u32>,
    /// Bottleneck width as a multiple of the growth rate (DenseNet-BC's 1x1 conv); at least 1.
    /// Default 4.
    #[arg(long)]
    bn_size: Option<u32>,
    /// Channels kept by each transition. Default 0.5.
    #[arg(long)]
    compression: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f32,
    /// An ImageNet-family model instead: densenet121, densenet169, densenet201, densenet161.
    #[arg(long)]
    model: Option<String>,
    /// Default 300, or 2 on the synthetic set.
    #[arg(long)]
    epochs: Option<u32>,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Learning-rate drops (x0.1) as fractions of the run, each in [0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.75")]
    milestones: Vec<f64>,
    #[arg(long, default_value = "efficient")]
    memory: MemoryMode,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps in total (still saving and testing).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Training images held out for validation (0 = none). Default 5000, or 250 on the synthetic set.
    #[arg(long)]
    valid_size: Option<usize>,
    #[arg(long)]
    no_augment: bool,
    /// Batches follow the file order (data_batch_1.bin .. data_batch_5.bin, records in order).
    #[arg(long)]
    no_shuffle: bool,
    /// Write metrics.csv, last.safetensors, best.safetensors and checkpoint.safetensors here.
    /// Default with --resume: the folder resumed from.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue the run saved in this directory (its checkpoint.safetensors) with the model,
    /// flags and data settings it was started with; a flag given again must agree with them.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Also save checkpoint.safetensors every STEPS steps (mid-epoch checkpoints resume
    /// bit-exactly, as the end-of-epoch ones do), so that a crash loses at most STEPS steps.
    #[arg(long, value_name = "STEPS")]
    checkpoint_every: Option<u64>,
    /// Start from these weights (a densegpu or torchvision safetensors file). Without --model,
    /// --depth, --growth-rate, --bn-size or --compression the model is the file's (from its
    /// densegpu config, or read from its tensor names and shapes). A classifier for another
    /// number of classes than the data's is left out (fine-tuning) and the run says so.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Export the best weights as ONNX at the end.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Print one JSON summary line at the end.
    #[arg(long)]
    json: bool,
    /// Conv kernels: auto (tuned per shape on this adapter), register (for CPU drivers) or
    /// workgroup (for GPUs).
    #[arg(long, default_value = "auto", value_parser = ["auto", "register", "workgroup"])]
    kernels: String,
    /// With --kernels auto: cached (time only shapes this adapter's cache lacks), full (time
    /// all again) or off (the device type's default, no timing).
    #[arg(long, env = "DENSEGPU_AUTOTUNE", default_value = "cached", value_parser = clap::value_parser!(densegpu::tune::Autotune))]
    autotune: densegpu::tune::Autotune,
    /// Profile one training step: print where its time went (launches grouped by op family,
    /// direction and block, against this adapter's measured ceiling) and write its Chrome
    /// trace to FILE (open it in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// With --profile: which step of this run to profile, from 1. The first step compiles the
    /// kernels, so the default is the third.
    #[arg(long, default_value_t = 3)]
    profile_step: u64,
}

/// The flags that define a run, saved in its checkpoints for `--resume` (the model itself is
/// the checkpoint's config).
const DEFINING: resume::Defining = resume::Defining {
    fixed: &[
        "drop_rate",
        "epochs",
        "batch_size",
        "momentum",
        "weight_decay",
        "milestones",
        "memory",
        "seed",
        "valid_size",
        "no_augment",
        "no_shuffle",
    ],
    changeable: &["data", "download", "checkpoint_every", "lr"],
};

fn main() {
    resume::main::<Args>(&DEFINING, |a| a.json, run);
}

struct Summary {
    train_loss: f64,
    valid_accuracy: Option<f64>,
    test_accuracy: f64,
    images_per_second: f64,
    arena_bytes: u64,
    steps: u64,
}

fn load_data(args: &Args, synthetic: bool) -> Result<TrainTest> {
    if let Some(dir) = &args.download {
        let root = data::download_cifar10(data::CIFAR10_URL, dir, data::CIFAR10_MD5)?;
        return data::load(root);
    }
    match &args.data {
        // An image folder that is not CIFAR-shaped is most likely photos for train_imagenet.
        Some(dir) => data::load(dir).map_err(|e| match e {
            Error::Data(m) if dir.join("train").is_dir() => Error::Data(format!(
                "{m}\n(train_cifar trains on CIFAR-sized images held in memory; for photos of any size in \
                 {0}/train/<class>/ and {0}/val/<class>/, ImageNet's layout, use `cargo run --release --example \
                 train_imagenet -- --data {0}`)",
                dir.display()
            )),
            e => e,
        }),
        None => {
            debug_assert!(synthetic);
            // Small enough that the default run ends within a few minutes on a CPU driver.
            Ok(data::synthetic(2500, 500, args.seed))
        }
    }
}

/// Refuses flags that would train something other than what they say, before anything loads.
fn check_args(args: &Args) -> Result<()> {
    if args.model.is_none() && args.bn_size == Some(0) {
        return Err(Error::Config(
            "--bn-size 0 removes DenseNet-BC's bottleneck, which would build a plain DenseNet with another \
             depth than --depth says; use --bn-size 1 or more (the paper's is 4)"
                .into(),
        ));
    }
    let sgd = SgdHyper { lr: args.lr, momentum: args.momentum, weight_decay: args.weight_decay, nesterov: true };
    densegpu::train::check_sgd(&sgd)?;
    if let Some(m) = args.milestones.iter().find(|m| !(0.0..=1.0).contains(*m)) {
        return Err(Error::Config(format!("--milestones are fractions of the run in [0, 1] (e.g. 0.5,0.75), got {m}")));
    }
    if args.checkpoint_every == Some(0) {
        return Err(Error::Config("--checkpoint-every counts steps: give 1 or more (or leave it out)".into()));
    }
    if args.resume.is_some() && args.init.is_some() {
        return Err(Error::Config(
            "--init gives a new run its first weights, but --resume goes on from the checkpoint's; leave one out"
                .into(),
        ));
    }
    Ok(())
}

/// The model of a resumed run: the checkpoint's. Architecture flags given again must build
/// the same model.
fn resumed_config(saved: &SavedRun, flags_config: Option<DenseNetConfig>) -> Result<DenseNetConfig> {
    let config = saved.config()?;
    if let Some(given) = flags_config {
        if !config.same_architecture(&given) {
            return Err(Error::Config(format!(
                "the model flags give {} but the run saved in {} is {}; leave out --model, --depth, \
                 --growth-rate, --bn-size and --compression to go on with the saved model",
                describe(&given),
                saved.dir.display(),
                describe(&config)
            )));
        }
    }
    Ok(config)
}

fn run(args: &Args, flags: &densegpu::run::RunFlags, saved: Option<SavedRun>) -> Result<()> {
    check_args(args)?;
    let synthetic = args.data.is_none() && args.download.is_none();
    if synthetic && !args.json {
        println!(
            "No --data given: training on densegpu's built-in synthetic 10-class 32x32 set (no files needed).\n\
             For CIFAR-10 pass --data DIR (binary batches or train/test image folders) or --download DIR;\n\
             the full recipe is --depth 100 --epochs 300."
        );
    }
    let data = load_data(args, synthetic)?;
    let classes = data.train.num_classes() as u32;
    let init = args.init.as_deref().map(checkpoint::load_weights).transpose()?;
    let architecture_flags = args.model.is_some()
        || args.depth.is_some()
        || args.growth_rate.is_some()
        || args.bn_size.is_some()
        || args.compression.is_some();
    let flags_config = match (&args.model, &init) {
        (Some(name), _) => Some(DenseNetConfig::by_name(name, classes)?),
        // The --init file's own model: its densegpu config, or what its tensors say.
        (None, Some(weights)) if !architecture_flags => {
            let path = args.init.as_ref().expect("weights come from --init");
            Some(weights.model_config().map_err(|e| Error::Data(format!("--init {}: {e}", path.display())))?)
        }
        (None, _) if architecture_flags || saved.is_none() => {
            let depth = args.depth.unwrap_or(if synthetic { 22 } else { 100 });
            let mut c = DenseNetConfig::cifar_bc(depth, args.growth_rate.unwrap_or(12), classes)?;
            c.bn_size = args.bn_size.unwrap_or(4);
            c.compression = args.compression.unwrap_or(0.5);
            Some(c)
        }
        (None, _) => None,
    };
    let mut config = match &saved {
        Some(saved) => resumed_config(saved, flags_config)?,
        None => flags_config.expect("a new run's model comes from its flags"),
    };
    config.num_classes = classes;
    config.drop_rate = args.drop_rate;
    config.image_size = data.train.height as u32;
    let epochs = args.epochs.unwrap_or(if synthetic { 2 } else { 300 });
    let valid_size = args.valid_size.unwrap_or(if synthetic { 250 } else { 5000 });
    let (train, valid) = if valid_size > 0 {
        let (t, v) = data.train.split_validation(valid_size, args.seed)?;
        (t, Some(v))
    } else {
        (data.train.clone(), None)
    };

    let gpu = Arc::new(block_on(Gpu::new())?);
    let limits = densegpu::memory::arena_limits(gpu.max_binding_bytes());
    // Refuse a batch that cannot fit before allocating anything.
    plan_training(&config, args.batch_size, args.memory, &limits, None)?;
    let graph = config.build(args.batch_size, args.memory)?;
    let session = block_on(Session::new(gpu.clone(), graph, args.seed))?;
    if let (Some(path), Some(weights)) = (&args.init, &init) {
        let hint = if architecture_flags {
            "; leave out --model, --depth, --growth-rate, --bn-size and --compression to train the file's own model"
        } else {
            ""
        };
        if let Some(line) = run::apply_init(&session, path, weights, hint)? {
            // Said on stderr under --json, whose stdout is the one summary line.
            if args.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    if let Some(line) = run::choose_kernels(&session, Pass::Train, &args.kernels, args.autotune)? {
        // On stderr under --json, whose stdout is the one summary line.
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    let mut loader_options = LoaderOptions::train(args.batch_size as usize, args.seed);
    loader_options.shuffle = !args.no_shuffle;
    loader_options.augment = !args.no_augment;
    let loader = BatchLoader::new(train, loader_options)?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let sgd = SgdHyper { lr: args.lr, momentum: args.momentum, weight_decay: args.weight_decay, nesterov: true };
    let schedule = LrSchedule::step_decay(sgd, &args.milestones, epochs as u64 * per_epoch);
    let mut trainer =
        Trainer::new(session, loader, schedule)?.with_epochs(epochs as u64).with_max_steps(args.max_steps);
    let total_steps = trainer.total_steps().expect("the run has a number of epochs");

    // A resumed run goes on saving where it was saved, unless told otherwise.
    let save = args.save.as_deref().or(args.resume.as_deref());
    let mut files = RunFiles::new(save, &config, &["train_loss", "train_accuracy", "valid_accuracy"], args.lr)?;
    let mut state = TrainingState { rng_state: vec![args.seed], ..Default::default() };
    let mut sums_restored = true;
    if let Some(saved) = saved {
        let dir = saved.dir.clone();
        let resumed = block_on(files.resume(&mut trainer, saved))?;
        sums_restored = resumed.sums_restored;
        state = resumed.state;
        if !args.json {
            println!("Resumed from {} at epoch {}, step {}", dir.display(), state.epoch, trainer.session().step);
        }
    }
    flags.record(&mut state);

    block_on(trainer.session_mut().prepare(Pass::Train))?;
    let arena = trainer.session().allocated_bytes();
    if !args.json {
        println!(
            "{} on {}: {} parameters, {} mode, batch {}, {} steps ({epochs} epochs of {per_epoch}), {:.1} MiB on the device",
            describe(&config),
            gpu.info.name,
            trainer.session().graph.parameter_count(),
            args.memory,
            args.batch_size,
            total_steps,
            arena as f64 / (1 << 20) as f64
        );
    }
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(total_steps) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, epoch {prefix} {msg} [{elapsed} < {eta}]").unwrap(),
    );
    bar.set_position(trainer.session().step);
    let start = Instant::now();
    let start_step = trainer.session().step;
    let mut last_loss = f64::NAN;
    let mut valid_accuracy = None;
    if !sums_restored && !args.json {
        println!(
            "note: the checkpoint holds no running sums for epoch {}, so its row in metrics.csv covers only the \
             steps after resuming",
            state.epoch + 1
        );
    }
    let profile = run::ProfileRequest::arm(args.profile.as_deref(), args.profile_step, &mut trainer)?;
    while !trainer.finished() {
        let r = block_on(files.step(&mut trainer)).inspect_err(|_| bar.abandon())?;
        if let Some(report) = profile.as_ref().map(|p| p.after_step(&mut trainer)).transpose()?.flatten() {
            bar.suspend(|| println!("{report}"));
        }
        last_loss = r.loss as f64;
        let rate = (r.step - start_step) as f64 * args.batch_size as f64 / start.elapsed().as_secs_f64();
        bar.set_prefix(format!("{}", r.epoch + 1));
        bar.set_message(format!(
            "loss {:.3} acc {:.1}% {:.1} img/s {:.0} MiB",
            r.sums.mean_loss(),
            100.0 * r.sums.accuracy(),
            rate,
            arena as f64 / (1 << 20) as f64
        ));
        bar.set_position(r.step);
        // The rest is done at the end of an epoch, where --max-steps ends the run mid-epoch,
        // and every --checkpoint-every steps.
        let checkpoint_due = args.checkpoint_every.is_some_and(|n| r.step.is_multiple_of(n));
        if !r.epoch_ended && !trainer.finished() && !checkpoint_due {
            continue;
        }
        block_on(files.check_finite(trainer.session(), &r)).inspect_err(|_| bar.abandon())?;
        if r.epoch_ended {
            valid_accuracy = match &valid {
                Some(v) => Some(block_on(trainer.evaluate(v))?.accuracy),
                None => None,
            };
            let row = [Some(r.sums.mean_loss()), Some(r.sums.accuracy()), valid_accuracy];
            block_on(files.end_epoch(trainer.session(), r.epoch, valid_accuracy, &row))?;
        }
        block_on(files.save_checkpoint(&trainer, &mut state))?;
    }
    bar.finish();
    let elapsed = start.elapsed().as_secs_f64();
    let mut session = trainer.into_session();
    let steps = session.step - start_step;
    block_on(files.finish(&session))?;
    // Test the best-validation weights, as the reference recipe does: this run's, else those
    // of the run it resumed (on disk), else the final ones.
    if let Some(w) = files.best_weights()? {
        checkpoint::apply_weights(&session, &w)?;
    }
    let test_accuracy = block_on(densegpu::train::evaluate(&mut session, &data.test))?.accuracy;
    if let Some(path) = &args.onnx {
        export_onnx(&session, &config, path)?;
    }
    let summary = Summary {
        train_loss: last_loss,
        valid_accuracy,
        test_accuracy,
        images_per_second: steps as f64 * args.batch_size as f64 / elapsed,
        arena_bytes: session.allocated_bytes(),
        steps: session.step,
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "train_loss": summary.train_loss, "valid_accuracy": summary.valid_accuracy,
                "test_accuracy": summary.test_accuracy, "images_per_second": summary.images_per_second,
                "arena_bytes": summary.arena_bytes, "steps": summary.steps,
            })
        );
    } else {
        println!(
            "Done: {} steps, last train loss {:.4}, validation accuracy {}, test accuracy {:.2}% \
             ({} test images, chance is {:.0}%), {:.1} images/s",
            summary.steps,
            summary.train_loss,
            summary.valid_accuracy.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "n/a".into()),
            100.0 * summary.test_accuracy,
            data.test.len(),
            100.0 / classes as f64,
            summary.images_per_second
        );
    }
    Ok(())
}

fn describe(config: &DenseNetConfig) -> String {
    if config.small_inputs {
        let layers = config.block_config.iter().sum::<u32>();
        match config.bn_size {
            0 => format!("DenseNet-{} (k={})", layers + 4, config.growth_rate),
            _ => format!("DenseNet-BC-{} (k={})", 2 * layers + 4, config.growth_rate),
        }
    } else {
        format!("DenseNet (k={}, blocks {:?})", config.growth_rate, config.block_config)
    }
}

fn export_onnx(session: &Session, config: &DenseNetConfig, path: &Path) -> Result<()> {
    let tensors = block_on(session.state_dict())?;
    let options = densegpu::onnx::ExportOptions::default();
    densegpu::onnx::export_to_file(path, &session.graph, Some(config), &tensors, &options)?;
    println!("Exported the model as ONNX to {}", path.display());
    Ok(())
}
