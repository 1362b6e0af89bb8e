//! Trains (or fine-tunes) an ImageNet-family DenseNet on an image folder streamed from disk,
//! with torchvision's reference recipe: SGD with momentum 0.9 (plain, not Nesterov), weight
//! decay 1e-4, learning rate 0.1 x batch / 256, 90 epochs with the rate divided by 10 after
//! a third and two thirds of the run, RandomResizedCrop + flip for training and resize +
//! center crop for validation. Top-1 and top-5 accuracy on `DIR/val` (or `DIR/test`) are
//! reported at the end of each epoch and at the end.
//!
//!     cargo run --release --example train_imagenet -- --data DIR --model densenet121
//!     cargo run --release --example train_imagenet -- --data DIR --init densenet121.safetensors
//!
//! `--resume DIR` goes on with the run saved in DIR: its model, flags (see [`DEFINING`]) and
//! data settings come from the checkpoint, and it keeps saving into DIR. `--checkpoint-every
//! STEPS` checkpoints mid-epoch too: an ImageNet epoch is hours.
//!
//! `DIR/train/<class>/*.{png,jpg,jpeg}` is the training set; its sorted sub-folders are the
//! classes. The default batch is 32, small enough for a CPU driver (lavapipe) at 224 px in the
//! default memory mode; on a real GPU pass `--batch-size 256` (the reference's).

#[path = "cli/resume.rs"]
mod resume;

use clap::Parser;
use densegpu::checkpoint::{self, TrainingState};
use densegpu::data::{
    default_workers, eval_transform, train_transform, ImageFolderStream, Split, StreamLoader, StreamLoaderOptions,
    StreamOptions, Transform,
};
use densegpu::densenet::{plan_training, DenseNetConfig, MemoryMode};
use densegpu::run::{self, RunFiles};
use densegpu::run::{RunFlags, SavedRun};
use densegpu::train::Evaluation;
use densegpu::trainer::{LrSchedule, Trainer};
use densegpu::{block_on, Error, Gpu, Pass, Result, Session, SgdHyper};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Train an ImageNet-family DenseNet on an image folder with densegpu")]
struct Args {
    /// An image folder: DIR/train/<class>/* and DIR/val/<class>/* (or DIR/test/<class>/*).
    /// With --resume, default: the saved run's.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// densenet121, densenet169, densenet201 or densenet161. Default densenet121, or with
    /// --init the architecture of the --init file.
    #[arg(long)]
    model: Option<String>,
    /// Side of the square crops the model is trained and validated on.
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    /// 32 by default, for a CPU driver; the reference recipe's is 256.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Default 0.1 x batch / 256 (torchvision's reference, scaled linearly with the batch).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    #[arg(long, default_value_t = 90)]
    epochs: u32,
    #[arg(long, default_value = "efficient")]
    memory: MemoryMode,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps in total (still validating and saving).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Decoding threads. Default: the machine's cores.
    #[arg(long)]
    workers: Option<usize>,
    /// Replace an unreadable or corrupt image by the next good one (and count it) instead of
    /// stopping with an error naming it.
    #[arg(long)]
    skip_bad_images: bool,
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
    /// Start from these weights (a densegpu or torchvision safetensors file). Without --model
    /// the model is the file's. A classifier for another number of classes than the data's is
    /// left out (fine-tuning) and the run says so.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Export the final weights as ONNX at the end.
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
    fixed: &["image_size", "batch_size", "momentum", "weight_decay", "epochs", "memory", "seed", "skip_bad_images"],
    changeable: &["data", "checkpoint_every", "lr"],
};

fn main() {
    resume::main::<Args>(&DEFINING, |a| a.json, run);
}

fn sgd(args: &Args) -> SgdHyper {
    let lr = args.lr.unwrap_or(0.1 * args.batch_size as f32 / 256.0);
    SgdHyper { lr, momentum: args.momentum, weight_decay: args.weight_decay, nesterov: false }
}

/// Top-1/top-5 on the validation loader, a loader error (a bad file) ending it as an error.
fn validate(session: &mut Session, val: &StreamLoader) -> Result<Evaluation> {
    let batches = val.epoch(0).map(|b| b.map(|b| (b.images, b.labels)));
    block_on(densegpu::train::try_evaluate_batches(session, batches))
}

fn run(args: &Args, flags: &RunFlags, saved: Option<SavedRun>) -> Result<()> {
    let sgd = sgd(args);
    densegpu::train::check_sgd(&sgd)?;
    if args.checkpoint_every == Some(0) {
        return Err(Error::Config("--checkpoint-every counts steps: give 1 or more (or leave it out)".into()));
    }
    if saved.is_some() && args.init.is_some() {
        return Err(Error::Config(
            "--init gives a new run its first weights, but --resume goes on from the checkpoint's; leave one out"
                .into(),
        ));
    }
    if args.image_size < 32 {
        return Err(Error::Config(format!("--image-size must be at least 32, got {}", args.image_size)));
    }
    let stream_options = StreamOptions::default();
    // Only an old checkpoint, which saved no flags, can leave it out after --resume.
    let data_dir = args.data.as_deref().ok_or_else(|| {
        Error::Config("--data DIR: the checkpoint resumed from does not say where its data is; give --data".into())
    })?;
    let train_stream = ImageFolderStream::open(data_dir, Split::Train, stream_options.clone())?;
    let val_stream = ImageFolderStream::open(data_dir, Split::Eval, stream_options)?;
    let classes = train_stream.classes().len() as u32;
    let init = args.init.as_deref().map(checkpoint::load_weights).transpose()?;
    let mut config = match (&saved, &args.model, &init) {
        // A resumed run's model is its checkpoint's; --model given again must name it.
        (Some(saved), model, _) => {
            let config = saved.config()?;
            if let Some(name) = model {
                let given = DenseNetConfig::by_name(name, config.num_classes)?;
                if !config.same_architecture(&given) {
                    return Err(Error::Config(format!(
                        "--model {name} is not the model of the run saved in {}; leave --model out to go on with it",
                        saved.dir.display()
                    )));
                }
            }
            config
        }
        (None, Some(name), _) => DenseNetConfig::by_name(name, classes)?,
        (None, None, Some(weights)) => {
            let path = args.init.as_ref().expect("weights come from --init");
            weights.model_config().map_err(|e| Error::Data(format!("--init {}: {e}", path.display())))?
        }
        (None, None, None) => DenseNetConfig::by_name("densenet121", classes)?,
    };
    config.num_classes = classes;
    config.image_size = args.image_size;

    let workers = args.workers.unwrap_or_else(default_workers);
    let size = args.image_size;
    let train_tf: Transform = Arc::new(move |img, rng| train_transform(img, size, rng));
    let eval_tf: Transform = Arc::new(move |img, _| eval_transform(img, size));
    let mut train_opts = StreamLoaderOptions::train(args.batch_size as usize, args.seed);
    train_opts.workers = workers;
    train_opts.skip_bad_images = args.skip_bad_images;
    let mut val_opts = StreamLoaderOptions::eval(args.batch_size as usize);
    val_opts.workers = workers;
    val_opts.skip_bad_images = args.skip_bad_images;
    let (train_images, val_images) = (train_stream.len(), val_stream.len());
    let val_dir = val_stream.split_dir().to_path_buf();
    let loader = StreamLoader::new(train_stream, train_opts, train_tf)?;
    let val = StreamLoader::new(val_stream, val_opts, eval_tf)?;
    let per_epoch = loader.batches_per_epoch() as u64;
    if per_epoch == 0 {
        return Err(Error::Data(format!(
            "{} has {train_images} training images, fewer than one batch of {}",
            data_dir.display(),
            args.batch_size
        )));
    }

    let gpu = Arc::new(block_on(Gpu::new())?);
    let limits = densegpu::memory::arena_limits(gpu.max_binding_bytes());
    // Refuse a batch that cannot fit before allocating anything.
    let planned = plan_training(&config, args.batch_size, args.memory, &limits, None)?.report().total;
    let graph = config.build(args.batch_size, args.memory)?;
    let session = block_on(Session::new(gpu.clone(), graph, args.seed))?;
    if let (Some(path), Some(weights)) = (&args.init, &init) {
        let hint = if args.model.is_some() { "; leave out --model to train the file's own model" } else { "" };
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

    let schedule = LrSchedule::step_decay(sgd, &[1.0 / 3.0, 2.0 / 3.0], args.epochs as u64 * per_epoch);
    let mut trainer =
        Trainer::new(session, loader, schedule)?.with_epochs(args.epochs as u64).with_max_steps(args.max_steps);
    let total_steps = trainer.total_steps().expect("the run has a number of epochs");

    // A resumed run goes on saving where it was saved, unless told otherwise.
    let mut files = RunFiles::new(
        args.save.as_deref().or(args.resume.as_deref()),
        &config,
        &["train_loss", "train_accuracy", "val_loss", "top1", "top5"],
        sgd.lr,
    )?;
    let mut state = TrainingState { rng_state: vec![args.seed], ..Default::default() };
    if let Some(saved) = saved {
        let dir = saved.dir.clone();
        let resumed = block_on(files.resume(&mut trainer, saved))?;
        state = resumed.state;
        if !args.json {
            println!("Resumed from {} at epoch {}, step {}", dir.display(), state.epoch, trainer.session().step);
            if !resumed.sums_restored {
                println!(
                    "note: the checkpoint holds no running sums for epoch {}, so its row in metrics.csv covers \
                     only the steps after resuming",
                    state.epoch + 1
                );
            }
        }
    }

    flags.record(&mut state);

    block_on(trainer.session_mut().prepare(Pass::Train))?;
    let arena = trainer.session().allocated_bytes();
    if !args.json {
        println!(
            "DenseNet (k={}, blocks {:?}, {} classes, {size}x{size}) on {}: {} parameters, {} mode, batch {}, lr {}, {} steps ({} epochs \
             of {per_epoch}), {train_images} training and {val_images} validation images ({}), {workers} \
             workers, planned {:.1} MiB, allocated {:.1} MiB on the device",
            config.growth_rate,
            config.block_config,
            classes,
            gpu.info.name,
            trainer.session().graph.parameter_count(),
            args.memory,
            args.batch_size,
            sgd.lr,
            total_steps,
            args.epochs,
            val_dir.display(),
            planned as f64 / (1 << 20) as f64,
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
    let (mut waited, mut stepping) = (Duration::ZERO, Duration::ZERO);
    let mut last_loss = f64::NAN;
    let mut last_eval: Option<Evaluation> = None;
    let profile = run::ProfileRequest::arm(args.profile.as_deref(), args.profile_step, &mut trainer)?;
    while !trainer.finished() {
        let t = Instant::now();
        let r = block_on(files.step(&mut trainer)).inspect_err(|_| bar.abandon())?;
        if let Some(report) = profile.as_ref().map(|p| p.after_step(&mut trainer)).transpose()?.flatten() {
            bar.suspend(|| println!("{report}"));
        }
        stepping += t.elapsed();
        waited += r.data_wait;
        last_loss = r.loss as f64;
        let rate = (r.step - start_step) as f64 * args.batch_size as f64 / start.elapsed().as_secs_f64();
        bar.set_prefix(format!("{}", r.epoch + 1));
        bar.set_message(format!(
            "loss {:.3} acc {:.1}% {:.1} img/s, {:.0}% waiting for data",
            r.sums.mean_loss(),
            100.0 * r.sums.accuracy(),
            rate,
            100.0 * share(waited, stepping)
        ));
        bar.set_position(r.step);
        // Validation and saving at the end of an epoch, where --max-steps ends the run
        // mid-epoch, and (saving) every --checkpoint-every steps.
        let checkpoint_due = args.checkpoint_every.is_some_and(|n| r.step.is_multiple_of(n));
        if !r.epoch_ended && !trainer.finished() && !checkpoint_due {
            continue;
        }
        block_on(files.check_finite(trainer.session(), &r)).inspect_err(|_| bar.abandon())?;
        last_eval = None;
        if r.epoch_ended {
            let eval = validate(trainer.session_mut(), &val).inspect_err(|_| bar.abandon())?;
            let line = format!(
                "epoch {}: train loss {:.4}, val top-1 {:.2}% top-5 {:.2}% ({} images)",
                r.epoch + 1,
                r.sums.mean_loss(),
                100.0 * eval.accuracy,
                100.0 * eval.top5_accuracy,
                eval.images
            );
            // Under --json stdout is the one summary line; without a terminal the bar is hidden
            // and would drop the line.
            if args.json {
            } else if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            let row = [
                Some(r.sums.mean_loss()),
                Some(r.sums.accuracy()),
                Some(eval.loss),
                Some(eval.accuracy),
                Some(eval.top5_accuracy),
            ];
            block_on(files.end_epoch(trainer.session(), r.epoch, Some(eval.accuracy), &row))?;
            last_eval = Some(eval);
        }
        block_on(files.save_checkpoint(&trainer, &mut state))?;
    }
    bar.finish();
    let elapsed = start.elapsed().as_secs_f64();
    let bad_images = trainer.loader().bad_images().len();
    let mut session = trainer.into_session();
    let steps = session.step - start_step;
    block_on(files.finish(&session))?;
    // The final weights' validation accuracy: the last epoch's, or measured now when the run
    // ended mid-epoch (--max-steps).
    let eval = match last_eval {
        Some(e) => e,
        None => validate(&mut session, &val)?,
    };
    if let Some(path) = &args.onnx {
        let tensors = block_on(session.state_dict())?;
        let options = densegpu::onnx::ExportOptions::default();
        densegpu::onnx::export_to_file(path, &session.graph, Some(&config), &tensors, &options)?;
        if !args.json {
            println!("Exported the model as ONNX to {}", path.display());
        }
    }
    let images_per_second = steps as f64 * args.batch_size as f64 / elapsed;
    let wait_share = share(waited, stepping);
    let bad = bad_images + val.bad_images().len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "train_loss": last_loss, "top1": eval.accuracy, "top5": eval.top5_accuracy,
                "val_loss": eval.loss, "val_images": eval.images, "best_top1": files.best_accuracy(),
                "images_per_second": images_per_second, "data_wait_share": wait_share,
                "planned_bytes": planned, "arena_bytes": session.allocated_bytes(), "steps": session.step,
                "bad_images": bad,
            })
        );
    } else {
        println!(
            "Done: {} steps, last train loss {:.4}, val top-1 {:.2}% top-5 {:.2}% ({} images, chance is {:.1}%), \
             {:.1} images/s, {:.0}% of the step time waiting for data{}",
            session.step,
            last_loss,
            100.0 * eval.accuracy,
            100.0 * eval.top5_accuracy,
            eval.images,
            100.0 / classes as f64,
            images_per_second,
            100.0 * wait_share,
            if bad > 0 { format!(", {bad} bad images skipped") } else { String::new() }
        );
    }
    Ok(())
}

/// The share of `total` that `part` is, 0 when `total` is zero.
fn share(part: Duration, total: Duration) -> f64 {
    if total.is_zero() {
        0.0
    } else {
        part.as_secs_f64() / total.as_secs_f64()
    }
}
