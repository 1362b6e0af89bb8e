//! `cargo xtask web`: builds the browser package and serves the demo page.
//!
//! The wasm build prefers a rustup `wasm32-unknown-unknown` target. Where none can be
//! installed (as on the project's CI machines), it falls back to Debian's `rustc-web`, whose
//! library sources let cargo build std for wasm32 itself (`-Zbuild-std`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt_get, run, Result};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCES: &str = "/usr/lib/rustlib/src/rust/library/std";
const DEBIAN_PACKAGES: [&str; 3] = ["rustc-web", "rust-web-src", "lld-22"];

pub fn task(args: &[String]) -> Result {
    let mut build_only = false;
    let mut port = 8000u16;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--build-only" => build_only = true,
            "--port" => {
                port =
                    rest.next().and_then(|p| p.parse().ok()).ok_or("--port needs a port number, e.g. --port 8080")?;
            }
            other => return Err(format!("unknown option `{other}`: use --build-only or --port N")),
        }
    }
    build()?;
    if build_only {
        eprintln!("The page is ready in web/: serve that folder with any static server (wasm as application/wasm).");
        return Ok(());
    }
    serve(&root().join("web"), port)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

enum Toolchain {
    /// rustup's own toolchain with its wasm32 target installed.
    Rustup,
    /// Debian's rustc-web, building std from its sources.
    Debian,
}

fn has_rustup_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false)
}

fn has_debian_toolchain() -> bool {
    Path::new(DEBIAN_RUSTC).exists()
        && Path::new(DEBIAN_STD_SOURCES).exists()
        && Path::new("/usr/bin/rust-lld").exists()
}

fn toolchain() -> std::result::Result<Toolchain, String> {
    // DENSEGPU_WASM_TOOLCHAIN=debian forces the fallback route (to check it on a machine
    // that also has the rustup target).
    let forced_debian = std::env::var("DENSEGPU_WASM_TOOLCHAIN").is_ok_and(|v| v == "debian");
    if forced_debian {
        if !has_debian_toolchain() {
            install_debian_toolchain()?;
        }
        return Ok(Toolchain::Debian);
    }
    if has_rustup_wasm_target() {
        return Ok(Toolchain::Rustup);
    }
    // Try to add the target the normal way first; offline machines fail here harmlessly.
    let added = Command::new("rustup").args(["target", "add", WASM_TARGET]).status().is_ok_and(|s| s.success());
    if added && has_rustup_wasm_target() {
        return Ok(Toolchain::Rustup);
    }
    if !has_debian_toolchain() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("No wasm32 std from rustup: installing Debian's rustc-web to build std for wasm32.");
        install_debian_toolchain()?;
    }
    if has_debian_toolchain() {
        return Ok(Toolchain::Debian);
    }
    Err(format!(
        "no Rust toolchain for {WASM_TARGET}: run `rustup target add {WASM_TARGET}`, or on Debian/Ubuntu \
         `sudo apt-get install {}`",
        DEBIAN_PACKAGES.join(" ")
    ))
}

fn install_debian_toolchain() -> Result {
    apt_get(&["update", "-qq"])?;
    apt_get(&[&["install", "-y", "-qq"], &DEBIAN_PACKAGES[..]].concat())
}

/// The `wasm-bindgen` version in Cargo.lock: the CLI must be the very same version.
fn locked_wasm_bindgen_version() -> std::result::Result<String, String> {
    let lock =
        std::fs::read_to_string(root().join("Cargo.lock")).map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    Err("Cargo.lock has no wasm-bindgen package; run `cargo update -p densegpu-web`".into())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    home.join("bin").join(name)
}

fn ensure_wasm_bindgen_cli(version: &str) -> std::result::Result<PathBuf, String> {
    let bin = cargo_bin("wasm-bindgen");
    let installed =
        Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if installed.as_deref().is_ok_and(|v| v.split_whitespace().nth(1) == Some(version)) {
        return Ok(bin);
    }
    eprintln!("Installing wasm-bindgen-cli {version} to match the wasm-bindgen crate (a few minutes, once).");
    run("cargo", &["install", "wasm-bindgen-cli", "--version", version, "--force"])?;
    Ok(bin)
}

/// Builds `densegpu-web` for wasm32 and runs wasm-bindgen into `web/pkg`.
pub fn build() -> Result {
    let root = root();
    let version = locked_wasm_bindgen_version()?;
    let bindgen = ensure_wasm_bindgen_cli(&version)?;
    let toolchain = toolchain()?;
    let target_dir = root.join("target").join(match toolchain {
        Toolchain::Rustup => "wasm",
        // Another rustc: its own directory, so the two compilers never share artifacts.
        Toolchain::Debian => "wasm-debian",
    });
    let mut cargo = Command::new("cargo");
    cargo.current_dir(&root).args(["build", "--release", "-p", "densegpu-web", "--target", WASM_TARGET]);
    cargo.env("CARGO_TARGET_DIR", &target_dir);
    // Debug line tables would double the download; the browser gets none of them anyway.
    cargo.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if let Toolchain::Debian = toolchain {
        cargo.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1").arg("-Zbuild-std=std,panic_abort");
    }
    eprintln!("+ {cargo:?}");
    let status = cargo.status().map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the wasm build failed ({status})"));
    }
    let wasm = target_dir.join(WASM_TARGET).join("release").join("densegpu_web.wasm");
    let out = root.join("web").join("pkg");
    run(
        bindgen.to_str().ok_or("non-UTF-8 cargo home")?,
        &[
            "--target",
            "web",
            "--no-typescript",
            "--out-dir",
            out.to_str().ok_or("non-UTF-8 path")?,
            wasm.to_str().unwrap(),
        ],
    )?;
    eprintln!("Built {}", out.display());
    Ok(())
}

/// Makes sure the browser tests can run: Chromium, Node.js and the pinned playwright-core
/// (which drives Debian's Chromium; it never downloads a browser).
pub fn setup_browser() -> Result {
    if chromium().is_none() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("Installing Chromium for the browser tests.");
        apt_get(&["update", "-qq"])?;
        apt_get(&["install", "-y", "-qq", "chromium"])?;
    }
    if chromium().is_none() {
        return Err("the browser tests need Chromium: install it (Debian/Ubuntu: `sudo apt-get install chromium`) \
                    or set CHROMIUM to its path"
            .into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err(
            "the browser tests need Node.js 18 or newer (Debian/Ubuntu: `sudo apt-get install nodejs npm`)".into()
        );
    }
    let e2e = root().join("web").join("e2e");
    if !e2e.join("node_modules").join("playwright-core").exists() {
        let status = Command::new("npm")
            .current_dir(&e2e)
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .status()
            .map_err(|e| format!("could not start npm: {e}"))?;
        if !status.success() {
            return Err(format!("`npm ci` in web/e2e failed ({status})"));
        }
    }
    Ok(())
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        // Browsers compile wasm while it downloads only when it is served as application/wasm.
        "wasm" => "application/wasm",
        "png" => "image/png",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// Serves `dir` on 127.0.0.1 until interrupted.
fn serve(dir: &Path, port: u16) -> Result {
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}; pick another with --port N"))?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!(
        "Serving {} at http://127.0.0.1:{port}/ (Ctrl-C stops). WebGPU needs a recent Chrome, Edge or Safari.",
        dir.display()
    );
    for request in server.incoming_requests() {
        let path = request.url().split(['?', '#']).next().unwrap_or("/").to_string();
        let relative = path.trim_start_matches('/');
        let mut file = dir.join(if relative.is_empty() { "index.html" } else { relative });
        if file.is_dir() {
            file = file.join("index.html");
        }
        // Only files inside web/ are served.
        let inside = file.canonicalize().ok().filter(|f| f.starts_with(&dir));
        let response = match inside.and_then(|f| std::fs::read(&f).ok().map(|b| (f, b))) {
            Some((f, bytes)) => {
                let header = tiny_http::Header::from_bytes("Content-Type", content_type(&f)).unwrap();
                tiny_http::Response::from_data(bytes).with_header(header).with_status_code(200)
            }
            None => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
        };
        let _ = request.respond(response);
    }
    Ok(())
}
