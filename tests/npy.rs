#[path = "support/zip_builder.rs"]
mod zip_builder;

use mmengine::io::npy::{parse_npy, read_npy, read_npz, write_npy};
use mmengine::io::zip::{crc32, is_zip, ZipArchive};
use mmengine::Tensor;
use std::path::Path;
use zip_builder::{build_zip, f32_bytes, member, npy_bytes};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn err_text(r: mmengine::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn round_trip_and_header_layout() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [vec![2, 3], vec![5], vec![], vec![1, 0, 4], vec![2, 1, 3, 2]] {
        let n: usize = shape.iter().product();
        let t = Tensor::new(
            shape.clone(),
            (0..n).map(|i| i as f32 * 0.5 - 1.0).collect(),
        )
        .unwrap();
        let path = dir.path().join("t.npy");
        write_npy(&path, &t).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data must start 64-byte aligned");
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(bytes.len(), 10 + header_len + 4 * n);
        assert_eq!(read_npy(&path).unwrap(), t);
    }
    // The exact text numpy writes, including the 1-tuple comma and the empty tuple of a scalar.
    let header = |shape: Vec<usize>| {
        let path = dir.path().join("h.npy");
        let n = shape.iter().product();
        write_npy(&path, &Tensor::new(shape, vec![0.0; n]).unwrap()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        String::from_utf8(bytes[10..10 + len].to_vec())
            .unwrap()
            .trim_end()
            .to_string()
    };
    assert_eq!(
        header(vec![5]),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"
    );
    assert_eq!(
        header(vec![1, 512]),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 512), }"
    );
    assert_eq!(
        header(vec![]),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
    );
    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn versions_1_2_3() {
    let data = f32_bytes(&[1.0, -2.0, 3.5]);
    for major in [1, 2, 3] {
        let t = parse_npy(&npy_bytes(major, "<f4", false, "(3,)", &data)).unwrap();
        assert_eq!(t.shape, [3]);
        assert_eq!(t.data, [1.0, -2.0, 3.5]);
    }
    // Version 3 allows UTF-8; older files may use double quotes, other key orders and `L` suffixes.
    let text = "{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"<f4\"}";
    let mut bytes = b"\x93NUMPY\x03\x00".to_vec();
    bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&f32_bytes(&[7.0, 8.0]));
    let t = parse_npy(&bytes).unwrap();
    assert_eq!((t.shape, t.data), (vec![2, 1], vec![7.0, 8.0]));
    assert!(
        err_text(parse_npy(&npy_bytes(4, "<f4", false, "(3,)", &data))).contains("version 4.0")
    );
}

#[test]
fn dtypes_convert_to_f32() {
    let f8: Vec<u8> = [1.25f64, -1e10, 0.1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let t = parse_npy(&npy_bytes(1, "<f8", false, "(3,)", &f8)).unwrap();
    assert_eq!(t.data, [1.25, -1e10, 0.1f64 as f32]);
    let i8: Vec<u8> = [-3i64, 0, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let t = parse_npy(&npy_bytes(2, "<i8", false, "(3,)", &i8)).unwrap();
    assert_eq!(t.data, [-3.0, 0.0, (1u64 << 40) as f32]);
    let i4: Vec<u8> = [-7i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        parse_npy(&npy_bytes(1, "<i4", false, "(2,)", &i4))
            .unwrap()
            .data,
        [-7.0, 9.0]
    );
    let f2: Vec<u8> = [1.5f32, -0.25, 65504.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(
        parse_npy(&npy_bytes(1, "<f2", false, "(3,)", &f2))
            .unwrap()
            .data,
        [1.5, -0.25, 65504.0]
    );
    for descr in ["<u1", "|b1", "<c8", "<U3", "<f16"] {
        let e = err_text(parse_npy(&npy_bytes(1, descr, false, "(0,)", &[])));
        assert!(e.contains("unsupported dtype") && e.contains(descr), "{e}");
    }
}

#[test]
fn fortran_order_is_transposed() {
    // C order [[0,1,2],[3,4,5]] stored column-major.
    let t = parse_npy(&npy_bytes(
        1,
        "<f4",
        true,
        "(2, 3)",
        &f32_bytes(&[0., 3., 1., 4., 2., 5.]),
    ))
    .unwrap();
    assert_eq!(
        (t.shape, t.data),
        (vec![2, 3], vec![0., 1., 2., 3., 4., 5.])
    );
    // 3-D: the element at C index (i, j, k) sits at i + 2*j + 6*k in Fortran order.
    let (a, b, c) = (2, 3, 4);
    let mut f = vec![0f32; a * b * c];
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                f[i + a * j + a * b * k] = (100 * i + 10 * j + k) as f32;
            }
        }
    }
    let t = parse_npy(&npy_bytes(1, "<f4", true, "(2, 3, 4)", &f32_bytes(&f))).unwrap();
    let want: Vec<f32> = (0..a)
        .flat_map(|i| (0..b).flat_map(move |j| (0..c).map(move |k| (100 * i + 10 * j + k) as f32)))
        .collect();
    assert_eq!(t.data, want);
    // 1-D and empty arrays are the same in both orders.
    let t = parse_npy(&npy_bytes(
        1,
        "<f4",
        true,
        "(3,)",
        &f32_bytes(&[1., 2., 3.]),
    ))
    .unwrap();
    assert_eq!(t.data, [1., 2., 3.]);
    assert_eq!(
        parse_npy(&npy_bytes(1, "<f4", true, "(0, 3)", &[]))
            .unwrap()
            .shape,
        [0, 3]
    );
}

#[test]
fn big_endian_is_rejected_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "be.npy",
        &npy_bytes(1, ">f4", false, "(1,)", &[0x3f, 0x80, 0, 0]),
    );
    let e = err_text(read_npy(&path));
    assert!(e.contains("big-endian") && e.contains("be.npy"), "{e}");
}

#[test]
fn truncated_and_malformed_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let full = npy_bytes(1, "<f4", false, "(10,)", &f32_bytes(&[1.0; 10]));
    let path = write(dir.path(), "short.npy", &full[..full.len() - 3]);
    let e = err_text(read_npy(&path));
    assert!(
        e.contains("short.npy") && e.contains("truncated") && e.contains("40"),
        "{e}"
    );
    // Every prefix fails cleanly (header, length field, magic).
    for cut in 0..full.len() {
        let e = parse_npy(&full[..cut]).unwrap_err().to_string();
        assert!(!e.is_empty());
    }
    let path = write(
        dir.path(),
        "long.npy",
        &[full.as_slice(), &[0u8; 4]].concat(),
    );
    assert!(err_text(read_npy(&path)).contains("4 bytes after the data"));
    let path = write(dir.path(), "magic.npy", b"PK\x03\x04 not npy at all");
    let e = err_text(read_npy(&path));
    assert!(e.contains("magic.npy") && e.contains("bad magic"), "{e}");
    let e = err_text(read_npy(dir.path().join("missing.npy")));
    assert!(e.contains("missing.npy"), "{e}");
    for shape in [
        "[3]",
        "(3",
        "(-3,)",
        "(a,)",
        "(99999999999, 99999999999, 99999999999)",
    ] {
        let e = err_text(parse_npy(&npy_bytes(1, "<f4", false, shape, &[])));
        assert!(e.contains("shape"), "{shape}: {e}");
    }
    let e = err_text(parse_npy(&npy_bytes(
        1,
        "<f4",
        false,
        "(1,), 'extra': 1",
        &[0; 4],
    )));
    assert!(e.contains("unexpected key 'extra'"), "{e}");
    let structured = b"\x93NUMPY\x01\x00\x46\x00{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }   \n";
    assert!(err_text(parse_npy(structured)).contains("structured"));
}

fn sample_npz(zip64: bool) -> Vec<u8> {
    let a = npy_bytes(1, "<f4", false, "(2, 2)", &f32_bytes(&[1., 2., 3., 4.]));
    let b = npy_bytes(
        1,
        "<f8",
        false,
        "(3,)",
        &[0.5f64, 1.5, 2.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let w = npy_bytes(1, "<f4", false, "(1, 18, 4)", &f32_bytes(&[0.25; 72]));
    build_zip(
        &[
            member("zeta.npy", &a, false),
            member("b.npy", &b, true),
            member("w.npy", &w, true),
        ],
        zip64,
        b"",
    )
}

#[test]
fn npz_stored_and_deflated_members() {
    let dir = tempfile::tempdir().unwrap();
    for zip64 in [false, true] {
        let path = write(dir.path(), "a.npz", &sample_npz(zip64));
        let arrays = read_npz(&path).unwrap();
        let names: Vec<_> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "b", "w"], "archive order, no .npy suffix");
        assert_eq!(arrays[0].1.data, [1., 2., 3., 4.]);
        assert_eq!(arrays[1].1.data, [0.5, 1.5, 2.5]);
        assert_eq!(arrays[2].1.shape, [1, 18, 4]);
    }
    // An archive comment does not hide the end record.
    let npy = npy_bytes(1, "<f4", false, "(1,)", &f32_bytes(&[9.0]));
    let path = write(
        dir.path(),
        "c.npz",
        &build_zip(&[member("x.npy", &npy, true)], false, b"comment"),
    );
    assert_eq!(read_npz(&path).unwrap()[0].1.data, [9.0]);
}

#[test]
fn npz_errors_name_file_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let npy = npy_bytes(1, ">f4", false, "(1,)", &[0; 4]);
    let path = write(
        dir.path(),
        "be.npz",
        &build_zip(&[member("x.npy", &npy, true)], false, b""),
    );
    let e = err_text(read_npz(&path));
    assert!(
        e.contains("be.npz") && e.contains("'x.npy'") && e.contains("big-endian"),
        "{e}"
    );
    let path = write(
        dir.path(),
        "other.npz",
        &build_zip(&[member("notes.txt", b"hi", false)], false, b""),
    );
    let e = err_text(read_npz(&path));
    assert!(e.contains("other.npz") && e.contains("not a .npy"), "{e}");
    // Flip a payload byte of the stored member: the CRC catches it.
    let mut bytes = sample_npz(false);
    let at = 30 + "zeta.npy".len() + 70;
    bytes[at] ^= 0x55;
    let path = write(dir.path(), "crc.npz", &bytes);
    let e = err_text(read_npz(&path));
    assert!(
        e.contains("crc.npz") && e.contains("zeta.npy") && e.contains("CRC"),
        "{e}"
    );
    let path = write(dir.path(), "cut.npz", &sample_npz(false)[..100]);
    let e = err_text(read_npz(&path));
    assert!(e.contains("cut.npz") && e.contains("not a zip"), "{e}");
}

#[test]
fn zip_reader_api() {
    let bytes = sample_npz(false);
    let zip = ZipArchive::parse(&bytes).unwrap();
    assert_eq!(zip.names(), ["zeta.npy", "b.npy", "w.npy"]);
    assert!(matches!(
        zip.read("zeta.npy").unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(matches!(
        zip.read("w.npy").unwrap(),
        std::borrow::Cow::Owned(_)
    ));
    assert!(zip
        .read("nope")
        .unwrap_err()
        .to_string()
        .contains("no member 'nope'"));
    let empty = build_zip(&[], false, b"");
    assert!(ZipArchive::parse(&empty).unwrap().names().is_empty());
    // The directory, classic or zip64, describes the same members; `entries` and `get` expose it.
    for zip64 in [false, true] {
        let bytes = sample_npz(zip64);
        let zip = ZipArchive::parse(&bytes).unwrap();
        assert_eq!(zip.entries().len(), 3);
        for e in zip.entries() {
            assert_eq!(zip.get(&e.name), Some(e));
            let data = zip.read(&e.name).unwrap();
            assert_eq!(data.len() as u64, e.size);
            assert_eq!(crc32(&data), e.crc32);
            assert_eq!(e.method, if e.name == "zeta.npy" { 0 } else { 8 });
        }
        assert!(zip.get("nope").is_none());
    }
    assert!(is_zip(&sample_npz(true)) && !is_zip(b"\x93NUMPY"));
}

#[test]
fn hostile_zips_never_panic() {
    for zip64 in [false, true] {
        let good = sample_npz(zip64);
        let try_all = |bytes: &[u8]| {
            if let Ok(zip) = ZipArchive::parse(bytes) {
                for name in zip.names() {
                    let _ = zip.read(name).map(|b| parse_npy(&b));
                }
            }
        };
        for cut in 0..good.len() {
            try_all(&good[..cut]);
        }
        for i in 0..good.len() {
            for flip in [0xff, 0x80, 0x01] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                try_all(&bad);
            }
        }
    }
}
