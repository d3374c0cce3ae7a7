//! Running commands from tasks: echo them, stream their output, fail with the command line.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Runs a command in the workspace root, inheriting stdio; fails if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_in(&root(), program, args)
}

/// Runs a command in `dir`, inheriting stdio; fails if it fails.
pub fn run_in(dir: &std::path::Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a prepared command, inheriting stdio; fails with the command line if it fails.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("+ {line}");
    let status = cmd.status().with_context(|| format!("cannot run {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// What cargo prints when two targets write the same file: which one survives depends on
/// build order, so a test may run the wrong binary. Only a warning to cargo; an error here.
const COLLISION: &str = "output filename collision";

/// Whether a line of cargo's stderr reports two targets writing the same output file.
pub fn is_collision_warning(line: &str) -> bool {
    line.contains(COLLISION)
}

/// Runs cargo, streaming its stderr through, and fails if it fails or if it reports an
/// output filename collision.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let mut collisions = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut out = std::io::stderr().lock();
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading cargo's output")?;
            if is_collision_warning(&line) {
                collisions.push(line.clone());
            }
            // Losing our own stderr must not hide cargo's exit status.
            let _ = writeln!(out, "{line}");
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed with {status}", args.join(" "));
    }
    if !collisions.is_empty() {
        bail!(
            "`cargo {}` reported an {COLLISION}: two targets write the same file, and which one a test runs depends on build order; give every bin its own name\n{}",
            args.join(" "),
            collisions.join("\n")
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("`cargo xtask {task}` loads BPF programs and runs real containers: run it as root (sudo -E cargo xtask {task})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_cargos_collision_warning() {
        // As cargo 1.95 prints it.
        assert!(is_collision_warning(
            "warning: output filename collision at /w/target/debug/gracewatch"
        ));
        assert!(is_collision_warning("warning: output filename collision."));
        assert!(!is_collision_warning(
            "   Compiling agent v0.1.0 (/w/agent)"
        ));
        assert!(!is_collision_warning("warning: unused variable: `x`"));
    }
}
