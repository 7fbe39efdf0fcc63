//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The golden reference data: `$MMENGINE_GOLDEN`, else `../shared/golden` beside the repository.
pub fn golden_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MMENGINE_GOLDEN") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("golden")
}

pub fn golden(case: &str, file: &str) -> PathBuf {
    let path = golden_dir().join(case).join(file);
    assert!(
        path.exists(),
        "golden file {} is missing (set MMENGINE_GOLDEN to the golden folder)",
        path.display()
    );
    path
}

/// Assert `actual` matches `expected` within `abs` absolute, or `rel` relative for large values.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: length mismatch");
    let mut max_err = 0f32;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        let allowed = abs.max(rel * e.abs());
        assert!(
            err <= allowed && a.is_finite(),
            "{what}: element {i}: got {a}, expected {e} (error {err:e} > {allowed:e})"
        );
        max_err = max_err.max(err);
    }
    max_err
}
