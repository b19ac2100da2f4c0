//! Headless Chromium for tests: a screenshot of a local HTML file, or the DOM it
//! renders to. Include it in a test file with
//!
//! ```ignore
//! #[path = "support/chromium.rs"]
//! mod chromium;
//! ```
//!
//! The browser is `$CHROMIUM` when set, else `/usr/bin/chromium`, else
//! `chromium` or `chromium-browser` on `PATH`. When there is none, the functions
//! print "skipping: chromium not installed" and return `None`, except under CI
//! (`CI` set, not empty, `false` or `0`), where a missing browser fails the test.
//!
//! Each run is headless, runs as root (`--no-sandbox`), reaches no network service
//! of its own (no sync, component updates, background networking or QUIC), has a
//! fresh profile directory removed afterwards (also when the test panics), and is
//! killed, with every process it started, after [`TIMEOUT`]: a hung browser fails
//! the test instead of hanging the run.
//!
//! Not every test file uses every function: each public one allows `dead_code`
//! (which also keeps what it calls alive), so including the module needs no
//! attribute.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nhi_guard_testkit::temp::TempDir;

/// How long one browser run may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// The window (and so screenshot) size: width, height in CSS pixels.
#[allow(dead_code)]
pub(crate) const WINDOW: (u32, u32) = (1400, 1800);

/// CI is running: `CI` set, and neither empty nor `false` nor `0`.
#[allow(dead_code)]
pub(crate) fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The browser to run, if any: `$CHROMIUM` (which must exist when set), then
/// `/usr/bin/chromium`, then `chromium` and `chromium-browser` on `PATH`.
#[allow(dead_code)]
pub(crate) fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CHROMIUM={} is not a file: unset it or point it at a Chromium binary",
            path.display()
        );
        return Some(path);
    }
    let standard = Path::new("/usr/bin/chromium");
    if standard.is_file() {
        return Some(standard.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The browser, or `None` after saying the test skips; under CI a missing browser
/// panics.
fn browser() -> Option<PathBuf> {
    match find() {
        Some(path) => Some(path),
        None if under_ci() => panic!(
            "chromium not installed, and CI is set: install Debian's `chromium` package \
             (apt-get install chromium) or set CHROMIUM to a Chromium binary"
        ),
        None => {
            eprintln!("skipping: chromium not installed (set CHROMIUM or install the chromium package)");
            None
        }
    }
}

/// Renders `html` (a local file) in a `WINDOW`-sized headless window and writes a
/// PNG screenshot of it to `png`. `None` when there is no browser (outside CI).
///
/// # Panics
/// When the browser fails, times out or writes no screenshot.
#[allow(dead_code)]
pub(crate) fn screenshot(html: &Path, png: &Path) -> Option<()> {
    let exe = browser()?;
    let _ = std::fs::remove_file(png);
    let out = run(
        &exe,
        &[
            format!("--screenshot={}", absolute(png).display()),
            file_url(html),
        ],
    );
    assert!(
        png.is_file(),
        "chromium wrote no screenshot to {} ({})\n{}",
        png.display(),
        out.status,
        out.stderr
    );
    Some(())
}

/// The DOM that `html` (a local file) renders to, serialised by the browser
/// (`--dump-dom`). `None` when there is no browser (outside CI).
///
/// # Panics
/// When the browser fails or times out.
#[allow(dead_code)]
pub(crate) fn dump_dom(html: &Path) -> Option<String> {
    let exe = browser()?;
    let out = run(&exe, &["--dump-dom".to_owned(), file_url(html)]);
    Some(out.stdout)
}

/// What a run printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the browser with the common flags and `args`, within [`TIMEOUT`].
fn run(exe: &Path, args: &[String]) -> Output {
    // A fresh profile per run, removed when this returns or unwinds.
    let profile = TempDir::unique("nhi-guard-chromium-profile");
    let mut command = Command::new(exe);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group: on timeout the browser's helper processes are killed too.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let mut child = Killer(child);
    // Read both pipes while waiting: a large --dump-dom would fill the pipe and
    // block the browser otherwise.
    let stdout = reader(child.0.stdout.take());
    let stderr = reader(child.0.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                child.kill();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "chromium did not finish within {}s (killed): {} {}\n{stderr}",
                    TIMEOUT.as_secs(),
                    exe.display(),
                    args.join(" ")
                );
            }
            Err(e) => panic!("waiting for chromium: {e}"),
        }
    };
    // The browser is gone; a helper of it still holding the pipes open would keep
    // the readers waiting: give them a moment, then end the helpers' group (which
    // exists while they do, so its id is still theirs).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(stdout.is_finished() && stderr.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !(stdout.is_finished() && stderr.is_finished()) {
        kill_group(child.0.id());
    }
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        out.status.success(),
        "chromium failed ({}): {} {}\n{}",
        out.status,
        exe.display(),
        args.join(" "),
        out.stderr
    );
    drop(profile);
    out
}

/// Kills the browser's process group when dropped before it exited (a panicking
/// test included).
struct Killer(Child);

impl Killer {
    /// Ends the browser and every process of its group, and reaps it.
    fn kill(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // Not reaped yet: the group id (the browser's pid) is still its own.
            kill_group(self.0.id());
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -KILL -- -PGID`: every process of the group the browser leads
/// (`process_group(0)` made its pid the group id).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `file://` and the absolute path, with the characters a URL cannot hold as such
/// percent-encoded.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in absolute(path).to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}
