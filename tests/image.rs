use mmengine::io::image::{
    grid_shape, to_rgb8, to_rgb8_with, to_u8, write_grid_png, write_image_png, write_png, Images8,
    Normalize,
};
use mmengine::Tensor;
use std::path::Path;

/// Decode a PNG: (width, height, color type, pixels).
fn decode(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    (info.width, info.height, info.color_type, buf)
}

#[test]
fn conversion_matches_nvlabs() {
    // x * 127.5 + 128, clamped, truncated toward zero.
    assert_eq!(to_u8(-1.0), 0); // 0.5
    assert_eq!(to_u8(1.0), 255); // 255.5
    assert_eq!(to_u8(0.0), 128);
    assert_eq!(to_u8(-0.5), 64); // 64.25
    assert_eq!(to_u8(0.5), 191); // 191.75
    assert_eq!(to_u8(-1.003_921_6), 0); // just below 0 before the clamp
    assert_eq!(to_u8(-5.0), 0);
    assert_eq!(to_u8(7.0), 255);
    assert_eq!(to_u8(f32::INFINITY), 255);
    assert_eq!(to_u8(f32::NEG_INFINITY), 0);
    // Policy: NaN is black.
    assert_eq!(to_u8(f32::NAN), 0);
    // Every byte value is reachable from its natural preimage (v - 128) / 127.5.
    for b in 0..=255u8 {
        assert_eq!(to_u8((b as f32 - 128.0) / 127.5), b);
    }
}

#[test]
fn nchw_to_interleaved() {
    // 2 images, RGB, 1x2 pixels; channel planes hold distinct values.
    let mut data = vec![0f32; 2 * 3 * 2];
    for (i, v) in data.iter_mut().enumerate() {
        *v = (i as f32 - 6.0) / 6.0;
    }
    let t = Tensor::new(vec![2, 3, 1, 2], data.clone()).unwrap();
    let img1 = to_rgb8(&t, 1).unwrap();
    // Image 1 planes: R = data[6..8], G = data[8..10], B = data[10..12].
    let want: Vec<u8> = [6, 8, 10, 7, 9, 11]
        .iter()
        .map(|&i| to_u8(data[i]))
        .collect();
    assert_eq!(img1, want);
    let gray = Tensor::new(vec![1, 1, 2, 2], vec![-1.0, 0.0, 0.5, 1.0]).unwrap();
    assert_eq!(to_rgb8(&gray, 0).unwrap(), [0, 128, 191, 255]);
    assert!(to_rgb8(&t, 2)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let two = Tensor::new(vec![1, 2, 1, 1], vec![0.0; 2]).unwrap();
    assert!(to_rgb8(&two, 0)
        .unwrap_err()
        .to_string()
        .contains("channels"));
    let flat = Tensor::new(vec![3, 4], vec![0.0; 12]).unwrap();
    assert!(to_rgb8(&flat, 0)
        .unwrap_err()
        .to_string()
        .contains("[N, C, H, W]"));
    let lying = Tensor {
        shape: vec![1, 3, 4, 4],
        data: vec![0.0; 5],
    };
    assert!(to_rgb8(&lying, 0).is_err());
}

#[test]
fn png_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7) as u8).collect();
    let path = dir.path().join("rgb.png");
    write_png(&path, 5, 3, 3, &rgb).unwrap();
    assert_eq!(decode(&path), (5, 3, png::ColorType::Rgb, rgb));
    let gray: Vec<u8> = (0..4 * 2).map(|i| (i * 30) as u8).collect();
    let path = dir.path().join("gray.png");
    write_png(&path, 4, 2, 1, &gray).unwrap();
    assert_eq!(decode(&path), (4, 2, png::ColorType::Grayscale, gray));
    let e = write_png(dir.path().join("x.png"), 4, 2, 3, &[0; 5])
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.png") && e.contains("needs 24 bytes"), "{e}");
    assert!(write_png(dir.path().join("x.png"), 1, 1, 2, &[0; 2]).is_err());
    assert!(write_png(dir.path().join("x.png"), 0, 1, 3, &[]).is_err());
    assert!(!dir.path().join("x.png").exists());
}

fn batch(n: usize, c: usize, h: usize, w: usize) -> Tensor {
    // Image i is filled with a value whose byte is 10 * (i + 1), so cells are recognisable.
    let mut data = Vec::new();
    for i in 0..n {
        let v = (10.0 * (i + 1) as f32 + 0.5 - 128.0) / 127.5;
        data.extend(std::iter::repeat_n(v, c * h * w));
    }
    Tensor::new(vec![n, c, h, w], data).unwrap()
}

#[test]
fn grid_layout() {
    assert_eq!(grid_shape(1), (1, 1));
    assert_eq!(grid_shape(2), (2, 1));
    assert_eq!(grid_shape(3), (2, 2));
    assert_eq!(grid_shape(4), (2, 2));
    assert_eq!(grid_shape(5), (3, 2));
    assert_eq!(grid_shape(9), (3, 3));
    assert_eq!(grid_shape(10), (4, 3));
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (2, 3);
    for (n, c) in [(1, 3), (3, 3), (4, 1), (5, 3)] {
        let path = dir.path().join(format!("grid{n}.png"));
        write_grid_png(&path, &Images8::from_tensor(&batch(n, c, h, w)).unwrap()).unwrap();
        let (cols, rows) = grid_shape(n);
        let (gw, gh, color, px) = decode(&path);
        assert_eq!((gw as usize, gh as usize), (cols * w, rows * h), "n={n}");
        let want_color = if c == 3 {
            png::ColorType::Rgb
        } else {
            png::ColorType::Grayscale
        };
        assert_eq!(color, want_color);
        for y in 0..rows * h {
            for x in 0..cols * w {
                let cell = (y / h) * cols + x / w;
                let want = if cell < n { 10 * (cell as u8 + 1) } else { 0 };
                for ch in 0..c {
                    assert_eq!(
                        px[(y * cols * w + x) * c + ch],
                        want,
                        "n={n} pixel ({x},{y})"
                    );
                }
            }
        }
    }
    let none = Images8::from_tensor(&batch(0, 3, 2, 2)).unwrap();
    let e = write_grid_png(dir.path().join("none.png"), &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.png") && e.contains("zero images"), "{e}");
}

#[test]
fn unwritable_path_names_it_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_dir").join("out.png");
    let e = write_grid_png(&path, &Images8::from_tensor(&batch(1, 3, 2, 2)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_dir") && e.contains("out.png"), "{e}");
    assert!(!dir.path().join("no_such_dir").exists());
    // The final rename fails when the target is a directory: the temporary sibling must be cleaned up.
    let target = dir.path().join("taken.png");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = write_png(&target, 1, 1, 1, &[7]).unwrap_err().to_string();
    assert!(e.contains("taken.png"), "{e}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["taken.png"], "no temporary file left behind");
}

#[test]
fn minmax_stretches_each_image_over_all_channels() {
    // Two 1x2 RGB images: the second is constant.
    let images = Tensor::new(
        vec![2, 3, 1, 2],
        vec![-3.0, 1.0, 0.0, 2.0, 5.0, -1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    )
    .unwrap();
    // rint((v + 3) / 8 * 255), ties to even (127.5 -> 128) as skimage's img_as_ubyte; pixels interleaved.
    assert_eq!(
        to_rgb8_with(&images, 0, Normalize::MinMax).unwrap(),
        vec![0, 96, 255, 128, 159, 64]
    );
    assert_eq!(
        to_rgb8_with(&images, 1, Normalize::MinMax).unwrap(),
        vec![0; 6]
    );
    assert_eq!(
        to_rgb8_with(&images, 0, Normalize::Clamp).unwrap(),
        to_rgb8(&images, 0).unwrap()
    );
}

#[test]
fn images8_hold_each_image_as_to_rgb8_gives_it() {
    // Values around the byte boundaries, both clamps, NaN and the infinities, different in every image.
    let (n, c, h, w) = (3, 3, 4, 5);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 1.0, 0.0];
    let data: Vec<f32> = (0..n * c * h * w)
        .map(|i| match i % 7 {
            0 => specials[(i / 7) % specials.len()],
            k => (i as f32 * 0.37).sin() * 1.1 + k as f32 * 1e-3,
        })
        .collect();
    let t = Tensor::new(vec![n, c, h, w], data).unwrap();
    let images = Images8::from_tensor(&t).unwrap();
    assert_eq!(
        (images.count, images.height, images.width, images.channels),
        (n, h, w, c)
    );
    for i in 0..n {
        assert_eq!(
            images.image(i),
            to_rgb8(&t, i).unwrap().as_slice(),
            "image {i}"
        );
    }
    // Joined batches keep their order; PNGs of an image hold its bytes.
    let joined = Images8::cat(vec![images.clone(), images.clone()]).unwrap();
    assert_eq!(joined.count, 2 * n);
    assert_eq!(joined.image(n + 1), images.image(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.png");
    write_image_png(&path, &images, 2).unwrap();
    assert_eq!(decode(&path).3, images.image(2));
    let e = write_image_png(dir.path().join("past.png"), &images, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("past.png") && e.contains("out of range"), "{e}");
}

#[test]
fn images8_reject_inconsistent_batches() {
    let e = Images8::new(2, 2, 2, 3, vec![0; 23])
        .unwrap_err()
        .to_string();
    assert!(e.contains("need 24 bytes, got 23"), "{e}");
    let e = Images8::new(1, 2, 2, 2, vec![0; 8])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 (grayscale) or 3 (RGB)"), "{e}");
    let a = Images8::new(1, 2, 2, 3, vec![0; 12]).unwrap();
    let b = Images8::new(1, 2, 3, 3, vec![0; 18]).unwrap();
    let e = Images8::cat(vec![a, b]).unwrap_err().to_string();
    assert!(e.contains("cannot join 2x2x3 images with 3x2x3"), "{e}");
    assert!(Images8::cat(Vec::new()).is_err());
}
