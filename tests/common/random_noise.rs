//! The device's `random_noise` kernel against its host twin (`cpu::noise::fill_plane`), for the emulation
//! (`tests/emu.rs`) and a GPU (`tests/gpu.rs`). The two compute the same steps in f32; only `logf` and
//! `sincospif` may differ, by an ulp or so between the host's library and the device's.

use mmengine::cpu::noise::fill_plane;
use mmengine::cuda::device::{Device, DeviceTensor};
use mmengine::cuda::ops::random_noise_on;

/// Returns how many values matched the host's bit for bit (out of how many).
pub fn kernel_matches_the_host(dev: &impl Device) -> (usize, usize) {
    let (mut exact, mut total) = (0, 0);
    // An odd plane (its last pair has one pixel), a 64 x 64 one, and images past 2^32 in the job.
    for (h, w, first_image, layer, seed, strength) in [
        (5, 7, 3, 0, 0, 1.0f32),
        (64, 64, 1000, 16, 12345, 0.25),
        (8, 8, (1usize << 32) + 7, 3, u32::MAX, -0.5),
    ] {
        let n = 3;
        let noise = random_noise_on(dev, [n, h, w], seed, first_image, layer, strength)
            .and_then(|t: DeviceTensor<_>| t.download(dev))
            .unwrap();
        assert_eq!(noise.shape, [n, 1, h, w]);
        for b in 0..n {
            let mut host = vec![0f32; h * w];
            fill_plane(seed, first_image + b, layer, strength, &mut host);
            let device = &noise.data[b * h * w..(b + 1) * h * w];
            for (i, (&d, &e)) in device.iter().zip(&host).enumerate() {
                assert!(
                    (d - e).abs() <= 4e-6 * (1.0 + e.abs()),
                    "{h}x{w} image {b} pixel {i}: device {d}, host {e}"
                );
                exact += usize::from(d.to_bits() == e.to_bits());
                total += 1;
            }
            // Not a constant or a repeated plane: the images differ.
            if b > 0 {
                assert_ne!(
                    &noise.data[..h * w],
                    device,
                    "images 0 and {b} drew the same noise"
                );
            }
        }
    }
    (exact, total)
}
