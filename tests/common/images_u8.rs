//! The device's `images_to_u8` kernel against its host twin (`Images8::from_tensor`, NVlabs' rule), for the
//! emulation (`tests/emu.rs`) and a GPU (`tests/gpu.rs`): the bytes must be identical.

use super::Rng;
use mmengine::cuda::device::Device;
use mmengine::cuda::ops;
use mmengine::io::image::Images8;
use mmengine::Tensor;

pub fn kernel_matches_the_host_conversion(dev: &impl Device) {
    // Every byte's boundaries (x * 127.5 + 128 at each integer and one ulp either side), beyond both clamps, NaN
    // and the infinities, then random values, in RGB and gray batches.
    let mut values = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.0,
        1.0,
        0.0,
        -2.0,
        3.0,
    ];
    for k in 0..=256 {
        let x = (k as f32 - 128.0) / 127.5;
        values.extend([
            x,
            f32::from_bits(x.to_bits() + 1),
            f32::from_bits(x.to_bits().wrapping_sub(1)),
        ]);
    }
    let mut rng = Rng(7);
    for (n, c, h, w) in [(2, 3, 17, 23), (3, 1, 8, 9)] {
        let data = (0..n * c * h * w)
            .map(|i| values.get(i).copied().unwrap_or_else(|| 1.2 * rng.next()))
            .collect();
        let t = Tensor::new(vec![n, c, h, w], data).unwrap();
        let want = Images8::from_tensor(&t).unwrap();
        let got = ops::images_to_u8(dev, &t).unwrap();
        assert_eq!(
            (got.count, got.height, got.width, got.channels),
            (n, h, w, c)
        );
        // Byte i is value (i % c) of pixel i / c: channel plane (i % c) of image i / (c h w).
        if let Some(i) = (0..want.data.len()).find(|&i| got.data[i] != want.data[i]) {
            let (image, pixel, channel) = (i / (c * h * w), (i / c) % (h * w), i % c);
            let x = t.data[(image * c + channel) * h * w + pixel];
            panic!(
                "{n}x{c}x{h}x{w}: byte {i} (value {x:e}) is {}, the host makes {}",
                got.data[i], want.data[i]
            );
        }
    }
    let err = ops::images_to_u8(dev, &Tensor::zeros(vec![1, 2, 4, 4]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 (grayscale) or 3 (RGB) channels"), "{err}");
}
