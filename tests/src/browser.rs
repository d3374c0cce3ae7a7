//! Debian's Chromium, headless, as the picture tests use it: `--dump-dom` for what the page
//! shows and `--screenshot` for a person to look at. Each run gets a private profile
//! directory, removed afterwards; the whole process group is ended when the run is over or
//! its time is up; and name resolution is switched off (`--host-resolver-rules`), so the
//! browser can reach nothing but the loopback address it is given.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest one browser run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn run(url: &str, extra: &[String]) -> anyhow::Result<String> {
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split([':', '/']).next())
        .filter(|host| host.starts_with("127."))
        .with_context(|| format!("the browser is only pointed at loopback addresses, not {url}"))?;
    if !Path::new(CHROMIUM).exists() {
        bail!("{CHROMIUM} is missing: run `cargo xtask setup` (Debian package chromium)");
    }
    let profile = std::env::temp_dir().join(format!("gracewatch-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile)?;
    let out_file = profile.join("stdout");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-breakpad",
            "--hide-scrollbars",
        ])
        // Every name resolves to nothing; only the page's own address is reachable.
        .arg(format!(
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}"
        ))
        .arg(format!(
            "--user-data-dir={}",
            profile.join("data").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file)?)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {CHROMIUM}"))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers (zygote, utility processes) share the group; none may outlive the run.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&profile);
    match status {
        None => bail!("chromium did not finish within {RUN_TIMEOUT:?}"),
        Some(s) if !s.success() => bail!("chromium exited with {s}"),
        Some(_) => Ok(stdout),
    }
}

/// The DOM of the page after it loaded, as Chromium serialises it.
pub fn dump_dom(url: &str) -> anyhow::Result<String> {
    run(url, &["--dump-dom".to_string()])
}

/// A PNG screenshot of the page, `width`×`height`, written to `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(png);
    run(
        url,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
    )?;
    let size = std::fs::metadata(png)
        .with_context(|| format!("chromium wrote no screenshot to {}", png.display()))?
        .len();
    if size < 1000 {
        bail!("the screenshot {} is only {size} bytes", png.display());
    }
    Ok(())
}
