//! `nhi-guard report --from FILE --html OUT`, run as a user runs it: the page it
//! writes parses as the structure the HTML tests expect, and a real browser
//! renders it. The screenshot stays at `target/nhi-guard-report/report.png` for a
//! person to look at.

#[path = "support/chromium.rs"]
mod chromium;

use std::path::{Path, PathBuf};
use std::process::Command;

use nhi_guard_testkit::temp::TempDir;
use scraper::{Html, Selector};

/// The report document the test renders.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report.json")
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// Writes the page with the real binary and returns its text.
fn write_page(out: &Path) -> String {
    let fixture = fixture();
    let run = Command::new(env!("CARGO_BIN_EXE_nhi-guard"))
        .arg("report")
        .arg("--from")
        .arg(&fixture)
        .arg("--html")
        .arg(out)
        .output()
        .expect("run nhi-guard");
    assert_eq!(
        run.status.code(),
        Some(0),
        "nhi-guard report --from {} --html {}\nstdout: {}\nstderr: {}",
        fixture.display(),
        out.display(),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{} not written: {e}", out.display()))
}

fn select<'a>(html: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    let selector = Selector::parse(css).unwrap_or_else(|e| panic!("selector {css:?}: {e}"));
    html.select(&selector).collect()
}

fn text(e: scraper::ElementRef<'_>) -> String {
    e.text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(png.get(12..16), Some(&b"IHDR"[..]), "no IHDR chunk first");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

/// Fewer bytes of PNG than a page with the fixture's clients takes. At 1400×1800,
/// Debian's Chromium 156 gives about 11 KB for a blank white page, 135 KB for the
/// report of an empty inventory (headings, totals, legend) and 350 KB for the
/// fixture: a page that lost its rows fails too.
const MIN_PNG_BYTES: usize = 200 * 1024;

#[test]
fn report_from_a_saved_document_renders_as_a_page_a_browser_shows() {
    let dir = TempDir::unique("nhi-guard-report-html");
    let out = dir.join("report.html");
    let page = write_page(&out);

    // The structure, parsed as a browser parses it.
    let html = Html::parse_document(&page);
    assert!(html.errors.is_empty(), "HTML errors: {:?}", html.errors);
    assert_eq!(select(&html, "table#clients tr.client").len(), 7);
    let soon = select(&html, "tr.client[data-client-id=\"inventory-sync\"] td.expiry");
    assert!(soon[0].value().classes().any(|c| c == "warn"));
    assert_eq!(select(&html, "section#ungoverned tr.ungoverned-client").len(), 2);
    assert_eq!(select(&html, "section#ungoverned tr.ungoverned-key").len(), 1);
    assert_eq!(select(&html, "section#risk tr.decision").len(), 2);
    assert!(select(&html, "script, link, img, iframe").is_empty());

    // Rendered by a real browser: the page's text is there, and it paints.
    let Some(dom) = chromium::dump_dom(&out) else {
        return;
    };
    let rendered = Html::parse_document(&dom);
    let ids: Vec<String> = select(&rendered, "table#clients tr.client th.client-id")
        .into_iter()
        .map(text)
        .collect();
    assert!(ids.iter().any(|id| id == "partner-acme"), "{ids:?}");
    assert!(
        dom.contains("ACME Logistics: shipment status"),
        "a purpose as text"
    );

    let shots = target_dir().join("nhi-guard-report");
    std::fs::create_dir_all(&shots).unwrap_or_else(|e| panic!("{}: {e}", shots.display()));
    let png_path = shots.join("report.png");
    chromium::screenshot(&out, &png_path).expect("chromium was found a moment ago");
    let png = std::fs::read(&png_path).expect("read the screenshot");
    assert_eq!(png_size(&png), chromium::WINDOW, "{}", png_path.display());
    assert!(
        png.len() > MIN_PNG_BYTES,
        "{} is {} bytes: a blank page? (more than {MIN_PNG_BYTES} expected)",
        png_path.display(),
        png.len()
    );
    eprintln!("screenshot: {}", png_path.display());
    drop(dir);
    assert!(!out.exists(), "the HTML went with its temporary directory");
}
