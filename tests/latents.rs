#[path = "support/zip_builder.rs"]
mod zip_builder;

use mmengine::io::latents::read_latents;
use mmengine::io::npy::write_npy;
use mmengine::io::safetensors::{self, Data};
use mmengine::Tensor;
use std::collections::BTreeMap;
use std::path::Path;
use zip_builder::{build_zip, f32_bytes, member, npy_bytes};

fn spec(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn err(spec: &str) -> String {
    read_latents(spec).unwrap_err().to_string()
}

fn npz(dir: &Path, file: &str, names: &[&str]) -> String {
    let arrays: Vec<Vec<u8>> = (0..names.len())
        .map(|i| npy_bytes(1, "<f4", false, "(1, 2)", &f32_bytes(&[i as f32, 0.5])))
        .collect();
    let entries: Vec<String> = names.iter().map(|n| format!("{n}.npy")).collect();
    let members: Vec<_> = entries
        .iter()
        .zip(&arrays)
        .map(|(n, a)| member(n, a, true))
        .collect();
    let path = dir.join(file);
    std::fs::write(&path, build_zip(&members, false, b"")).unwrap();
    spec(&path)
}

fn safetensors_file(dir: &Path, file: &str, names: &[&str]) -> String {
    let values: Vec<Vec<f32>> = (0..names.len()).map(|i| vec![i as f32; 4]).collect();
    let tensors: Vec<_> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| (*n, &[2usize, 2][..], Data::F32(v)))
        .collect();
    let path = dir.join(file);
    safetensors::write(&path, &tensors, &BTreeMap::new()).unwrap();
    spec(&path)
}

#[test]
fn npy_latents() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::new(vec![2, 512], (0..1024).map(|i| i as f32).collect()).unwrap();
    for file in ["z.npy", "Z.NPY", "with:colon.npy"] {
        let path = dir.path().join(file);
        write_npy(&path, &t).unwrap();
        assert_eq!(read_latents(&spec(&path)).unwrap(), t);
    }
}

#[test]
fn npz_latents() {
    let dir = tempfile::tempdir().unwrap();
    // NVlabs projector output: 'w' wins even when it is not first.
    let s = npz(dir.path(), "proj.npz", &["a", "w", "b"]);
    assert_eq!(read_latents(&s).unwrap().data, [1.0, 0.5]);
    let s = npz(dir.path(), "one.npz", &["latent"]);
    assert_eq!(read_latents(&s).unwrap().data, [0.0, 0.5]);
    let s = npz(dir.path(), "many.npz", &["a", "b", "c"]);
    assert_eq!(read_latents(&format!("{s}:c")).unwrap().data, [2.0, 0.5]);
    let e = err(&s);
    assert!(
        e.contains("many.npz") && e.contains("'a', 'b', 'c'") && e.contains("no array 'w'"),
        "{e}"
    );
    let e = err(&format!("{s}:zz"));
    assert!(
        e.contains("many.npz") && e.contains("no array 'zz'") && e.contains("'a', 'b', 'c'"),
        "{e}"
    );
    let e = err(&npz(dir.path(), "empty.npz", &[]));
    assert!(e.contains("empty.npz") && e.contains("no arrays"), "{e}");
}

#[test]
fn safetensors_latents() {
    let dir = tempfile::tempdir().unwrap();
    let s = safetensors_file(dir.path(), "one.safetensors", &["ws"]);
    let t = read_latents(&s).unwrap();
    assert_eq!((t.shape, t.data), (vec![2, 2], vec![0.0; 4]));
    let s = safetensors_file(dir.path(), "two.safetensors", &["a", "b"]);
    assert_eq!(read_latents(&format!("{s}:b")).unwrap().data, [1.0; 4]);
    let e = err(&s);
    assert!(
        e.contains("two.safetensors") && e.contains("several") && e.contains("'a', 'b'"),
        "{e}"
    );
    let e = err(&format!("{s}:c"));
    assert!(
        e.contains("two.safetensors") && e.contains("no tensor 'c'") && e.contains("'a', 'b'"),
        "{e}"
    );
    let e = err(&safetensors_file(dir.path(), "none.safetensors", &[]));
    assert!(
        e.contains("none.safetensors") && e.contains("no tensors"),
        "{e}"
    );
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "missing.npy",
        "missing.npz",
        "missing.safetensors",
        "missing.safetensors:x",
    ] {
        let e = err(&spec(&dir.path().join(file)));
        assert!(e.contains("missing."), "{file}: {e}");
    }
    let e = err(&spec(&dir.path().join("w.pt")));
    assert!(e.contains("w.pt"), "{e}");
    for file in ["z.txt", "z", "z.npy:w"] {
        let e = err(&spec(&dir.path().join(file)));
        assert!(
            e.contains(file) && e.contains("unknown latent file type"),
            "{file}: {e}"
        );
    }
    let path = dir.path().join("bad.npz");
    std::fs::write(&path, b"not a zip").unwrap();
    let e = err(&spec(&path));
    assert!(e.contains("bad.npz") && e.contains("not a zip"), "{e}");
}

#[test]
fn torch_files_hold_a_tensor_or_a_list_of_tensors() {
    let paper = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/paper");
    let smile = read_latents(paper.join("d_latent_smile.pt").to_str().unwrap()).unwrap();
    assert_eq!(smile.shape, vec![1, 18, 512]);
    let age = read_latents(paper.join("interfacegan_age.pt").to_str().unwrap()).unwrap();
    assert_eq!(age.shape, vec![1, 512]);
    let norm: f32 = age.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "unit-norm direction, got {norm}");
    // A checkpoint is not a latent: a dict is refused with a message naming the file.
    let ckpt = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/golden/rosinality_tiny/ckpt.pt");
    let e = read_latents(ckpt.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ckpt.pt") && e.contains("dict"), "{e}");
}
