//! Project tasks beyond plain cargo: `cargo xtask <task>`.
//!
//! - `setup`: make sure a Vulkan driver exists (installs Mesa's CPU driver, lavapipe, on
//!   Debian/Ubuntu machines without a GPU driver).
//! - `test [--full] [cargo test args]`: setup, then the full test suite (browser tests
//!   included), formatting and lint checks. `--full` also runs the exhaustive sweeps (every
//!   kernel candidate at every shape) that CI runs one representative of.
//! - `web [--build-only] [--port N]`: build the wasm package into `web/pkg` and serve `web/` on
//!   127.0.0.1.

mod web;

use std::path::Path;
use std::process::{exit, Command};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "setup" => setup(),
        "test" => setup().and_then(|_| test(&args[1..])),
        "lint" => lint(),
        "web" => web::task(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|test|lint|web>\n\n  \
                 setup  install a Vulkan driver (lavapipe) if none is present\n  \
                 test   setup, build the web package, run every test (browser tests included), then check formatting and lints\n         \
                 [--full: every kernel candidate at every shape too]\n  \
                 lint   cargo fmt --check and cargo clippy\n  \
                 web    build the wasm package into web/pkg and serve web/ on 127.0.0.1 [--build-only] [--port N]"
            );
            exit(if task == "help" { 0 } else { 2 });
        }
    };
    if let Err(e) = result {
        eprintln!("xtask {task}: {e}");
        exit(1);
    }
}

type Result = std::result::Result<(), String>;

pub(crate) fn run(program: &str, args: &[&str]) -> Result {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

/// Vulkan loaders find drivers through ICD manifests in these directories.
const ICD_DIRS: &[&str] = &["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];

fn has_vulkan_driver() -> bool {
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
        "/usr/lib64/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let icd = ICD_DIRS.iter().any(|d| std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(false));
    loader && icd
}

/// Runs `apt-get` with `args`, through sudo unless we are root.
pub(crate) fn apt_get(args: &[&str]) -> Result {
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if is_root {
        run("apt-get", args)
    } else {
        run("sudo", &[&["apt-get"], args].concat())
    }
}

fn setup() -> Result {
    if cfg!(not(target_os = "linux")) || has_vulkan_driver() {
        return Ok(());
    }
    let apt = Path::new("/usr/bin/apt-get").exists();
    let packages = ["mesa-vulkan-drivers", "libvulkan1"];
    if apt {
        eprintln!("No Vulkan driver found: installing Mesa's CPU driver (lavapipe) so wgpu has an adapter.");
        apt_get(&["update", "-qq"])?;
        apt_get(&[&["install", "-y", "-qq"], &packages[..]].concat())?;
        if has_vulkan_driver() {
            return Ok(());
        }
    }
    Err(format!(
        "no Vulkan driver is installed. Install your GPU's driver, or for a CPU-only machine Mesa's lavapipe \
         (Debian/Ubuntu: `sudo apt-get install {}`; Fedora: `sudo dnf install mesa-vulkan-drivers vulkan-loader`)",
        packages.join(" ")
    ))
}

fn test(extra: &[String]) -> Result {
    // The browser tests drive the page built here; with DENSEGPU_BROWSER_TESTS set, a missing
    // browser or package fails them instead of skipping them.
    web::build()?;
    web::setup_browser()?;
    std::env::set_var("DENSEGPU_BROWSER_TESTS", "1");
    // The tests read DENSEGPU_FULL_TESTS (tests/ops/common.rs, `full_tests`).
    let full = extra.iter().any(|a| a == "--full");
    if full {
        std::env::set_var("DENSEGPU_FULL_TESTS", "1");
    }
    let mut args = vec!["test", "--release", "--workspace"];
    args.extend(extra.iter().map(String::as_str).filter(|a| *a != "--full"));
    run("cargo", &args)?;
    lint()
}

fn lint() -> Result {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run("cargo", &["clippy", "--release", "--workspace", "--all-targets", "--", "-D", "warnings"])
}
