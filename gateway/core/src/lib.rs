pub mod admin;
pub mod blobs;
pub mod crl;
pub mod devpki;
pub mod directory;
pub mod directory_csv;
pub mod error;
pub mod lifecycle;
pub mod maintenance; // Maintenance notices
pub mod metrics;
pub mod operators;
pub mod pades;
pub mod peers;
pub mod pipeline;
pub mod receipts;
pub mod reports;
pub mod routing;
pub mod signing;
pub mod store;

pub use lienthong_types::{organ_id, text};

/// `samples/<sub>` of the reference data beside the checkout:
/// `$LIENTHONG_SAMPLES/<sub>`, else `../shared/samples/<sub>` next to the
/// workspace. Missing, a test skips with a line on stderr that shows even
/// when it passes, or fails in CI (`CI=true`) and under
/// `LIENTHONG_REQUIRE_SERVICES=1`.
#[cfg(test)]
pub(crate) fn reference_samples(test: &str, sub: &str) -> Option<std::path::PathBuf> {
    use std::io::Write;
    let root = std::env::var_os("LIENTHONG_SAMPLES").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/samples"),
        std::path::PathBuf::from,
    );
    let dir = root.join(sub);
    let required = ["CI", "LIENTHONG_REQUIRE_SERVICES"]
        .iter()
        .any(|v| matches!(std::env::var(v).as_deref(), Ok("1" | "true" | "yes")));
    match (dir.is_dir(), required) {
        (true, _) => Some(dir),
        (false, true) => panic!("{test}: no reference samples at {}", dir.display()),
        (false, false) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: {test}: no reference samples at {} (set LIENTHONG_SAMPLES)",
                dir.display()
            );
            None
        }
    }
}
