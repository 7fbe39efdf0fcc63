//! The golden `ops` cases (`mmengine::selftest`) asserted for any implementation of the ops: the CPU reference
//! (`tests/golden_ops.rs`), the CUDA kernels in the host emulation (`tests/emu.rs`) and on a GPU (`tests/gpu.rs`).

// For the test files that implement a backend; unused in the others, which share this module.
#[allow(unused_imports)]
pub use mmengine::selftest::OpBackend;

/// Runs every golden ops case the backend supports, prints each error, and fails on any case out of tolerance.
/// Returns the number of cases checked.
pub fn check_all_cases(backend: &dyn OpBackend) -> usize {
    let report =
        mmengine::selftest::ops_cases(&super::golden_dir(), backend).expect("golden ops cases");
    let name = backend.name();
    for c in &report.checks {
        println!(
            "{name}: {:40} max abs error {:.3e}",
            c.output, c.max_abs_err
        );
    }
    if !report.skipped.is_empty() {
        println!(
            "{name}: {} cases of ops it does not implement skipped: {}",
            report.skipped.len(),
            report.skipped.join(", ")
        );
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} ({:.3e}{})",
                c.case,
                c.max_abs_err,
                c.problem
                    .as_deref()
                    .map(|p| format!(", {p}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: golden ops cases out of tolerance: {}",
        failed.join("; ")
    );
    assert_eq!(
        report.checks.len() + report.skipped.len(),
        40,
        "the golden ops set should have 40 cases"
    );
    assert!(
        !report.checks.is_empty(),
        "{name}: no golden ops case checked"
    );
    report.checks.len()
}
