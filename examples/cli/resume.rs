//! `--resume DIR` for the trainers' command lines: the flags that define a run (batch size,
//! schedule, memory mode, data settings, seed...) are saved in its checkpoints
//! ([`RunFlags`]) and come back from them, so `--resume DIR` alone goes on with the run as it
//! was started. A flag given again with another value is refused by name. Shared by
//! `train_cifar` and `train_imagenet` (`#[path = "cli/resume.rs"] mod resume;`).

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};
use densegpu::run::{RunFlags, SavedRun};
use densegpu::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// Which flags define a run, by clap id (the field name).
pub struct Defining {
    /// Saved and restored; given again, they must say the same.
    pub fixed: &'static [&'static str],
    /// Saved and restored, but may be given again with another value (and the trainer says
    /// so): how often to checkpoint, a path to the same data set where it has moved (the loader
    /// still refuses data whose epoch differs), or a base learning rate to go on with (a
    /// lower one after a run diverged, as the stop suggests).
    pub changeable: &'static [&'static str],
}

/// A parsed command line, with what came from a checkpoint.
pub struct Parsed<A> {
    pub args: A,
    /// This run's defining flags, to save in its checkpoints.
    pub flags: RunFlags,
    /// The checkpoint of `--resume DIR`, read once.
    pub saved: Option<SavedRun>,
    /// Flags taken from the checkpoint because they were not given, as `--name value`.
    pub restored: Vec<String>,
    /// Changeable flags given with another value than the checkpoint's: what replaced what.
    pub changed: Vec<String>,
}

impl<A> Parsed<A> {
    /// The lines a trainer prints about what came from the checkpoint and what replaced it.
    pub fn report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.restored.is_empty() {
            lines.push(format!("Resuming with the saved run's {}", self.restored.join(" ")));
        }
        lines.extend(self.changed.iter().map(|c| format!("note: {c}")));
        lines
    }
}

/// Parses the process's command line (clap prints help and usage errors and exits, as usual).
/// With `--resume DIR` (`resume_id`), reads the checkpoint and adds the saved flags that were
/// not given. Errors: the checkpoint cannot be read, or a given flag contradicts it.
pub fn parse<A: CommandFactory + FromArgMatches>(defining: &Defining, resume_id: &str) -> Result<Parsed<A>> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = A::command();
    let matches = command.clone().get_matches_from(&argv);
    let ids: Vec<&str> = defining.fixed.iter().chain(defining.changeable).copied().collect();
    let Some(dir) = matches.get_one::<PathBuf>(resume_id).cloned() else {
        return Ok(Parsed {
            flags: flags_of(&command, &matches, &ids, false),
            args: args(&matches),
            saved: None,
            restored: vec![],
            changed: vec![],
        });
    };
    let saved = SavedRun::open(&dir)?;
    let Some(saved_flags) = RunFlags::saved(&saved.state)? else {
        // A checkpoint from before flags were saved: the command line is all there is.
        return Ok(Parsed {
            flags: flags_of(&command, &matches, &ids, false),
            args: args(&matches),
            saved: Some(saved),
            restored: vec![],
            changed: vec![],
        });
    };
    let given = flags_of(&command, &matches, &ids, true);
    let changeable: Vec<String> = defining.changeable.iter().map(|id| long_name(&command, id)).collect();
    let mut changed = Vec::new();
    for (name, values) in &given.0 {
        let started = match saved_flags.0.get(name) {
            Some(v) if RunFlags::same_values(v, values) => continue,
            Some(v) if changeable.contains(name) => {
                changed.push(format!("{} replaces the saved run's {}", shown(name, values), shown(name, v)));
                continue;
            }
            None if changeable.contains(name) => {
                changed.push(format!("{} replaces the saved run's default", shown(name, values)));
                continue;
            }
            Some(v) => format!("was started with {}", shown(name, v)),
            None => format!("was started without --{name}"),
        };
        return Err(Error::Config(format!(
            "{} contradicts the run saved in {}, which {started}; leave --{name} out to go on with the saved \
             run's, or start a new run in another folder (--save DIR without --resume)",
            shown(name, values),
            dir.display()
        )));
    }
    let mut added: Vec<OsString> = Vec::new();
    let mut restored = Vec::new();
    for (name, values) in &saved_flags.0 {
        if given.0.contains_key(name) || !ids.iter().any(|id| long_name(&command, id) == *name) {
            continue;
        }
        match values.as_slice() {
            [v] if v == "false" => {}
            [v] if v == "true" => added.push(format!("--{name}").into()),
            _ => added.push(format!("--{name}={}", values.join(",")).into()),
        }
        if values.as_slice() != ["false"] {
            restored.push(shown(name, values));
        }
    }
    let argv: Vec<OsString> = argv[..1].iter().cloned().chain(added).chain(argv[1..].iter().cloned()).collect();
    let matches = command.clone().get_matches_from(&argv);
    Ok(Parsed {
        flags: flags_of(&command, &matches, &ids, false),
        args: args(&matches),
        saved: Some(saved),
        restored,
        changed,
    })
}

fn args<A: FromArgMatches>(matches: &ArgMatches) -> A {
    A::from_arg_matches(matches).unwrap_or_else(|e| e.exit())
}

/// `--name value` (or `--name` for a switch that is on).
fn shown(name: &str, values: &[String]) -> String {
    match values {
        [v] if v == "true" => format!("--{name}"),
        [v] if v == "false" => format!("no --{name}"),
        _ => format!("--{name} {}", values.join(",")),
    }
}

fn arg<'a>(command: &'a Command, id: &str) -> &'a clap::Arg {
    command.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("`{id}` is a flag of this command"))
}

fn long_name(command: &Command, id: &str) -> String {
    arg(command, id).get_long().unwrap_or_else(|| panic!("`{id}` has a long name")).to_string()
}

/// The values of the flags `ids` that have one (given or by default), by long name; with
/// `only_given`, those given on the command line.
fn flags_of(command: &Command, matches: &ArgMatches, ids: &[&str], only_given: bool) -> RunFlags {
    let mut out = RunFlags::default();
    for id in ids {
        if only_given && matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        if let Some(raw) = matches.get_raw(id) {
            // A list flag's values one by one, however they were given (`--milestones 0.5,0.75`).
            let delimiter = arg(command, id).get_value_delimiter();
            let values = raw
                .flat_map(|v| {
                    let v = v.to_string_lossy().into_owned();
                    match delimiter {
                        Some(d) => v.split(d).map(str::to_string).collect(),
                        None => vec![v],
                    }
                })
                .collect();
            out.0.insert(long_name(command, id), values);
        }
    }
    out
}

/// A trainer's `main`: parses the command line ([`parse`]), says what came from the checkpoint
/// (on stderr when `json(&args)`, whose stdout is one summary line), runs `run`, and exits with
/// status 1 and the error's message when either fails.
pub fn main<A: CommandFactory + FromArgMatches>(
    defining: &Defining,
    json: impl Fn(&A) -> bool,
    run: impl FnOnce(&A, &RunFlags, Option<SavedRun>) -> Result<()>,
) {
    let result = parse::<A>(defining, "resume").and_then(|parsed| {
        for line in parsed.report() {
            if json(&parsed.args) {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        run(&parsed.args, &parsed.flags, parsed.saved)
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
