//! The CUDA generator as a [`Backend`]: the network uploaded once, mapping and synthesis on the device, and
//! batches split into passes planned from the free memory. The passes form a pipeline: while the device computes
//! one, the copy engine downloads the previous one into page-locked staging memory, and the host moves the one
//! before out of staging into the result.

use super::device::{Device, DeviceTensor};
use super::gemm::Precision;
use super::mapping::DeviceMapping;
use super::ops::images_to_u8_on;
use super::synthesis::{check_ws, DeviceSynthesis};
use crate::backend::{Backend, FrontPass, LayerProfile, NoiseMode, Truncation};
use crate::cpu::ConvPath;
use crate::error::{Error, Result};
use crate::io::image::Images8;
use crate::model::{LayerKind, Network, SynthesisLayer};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Output pixels per pass (32 images at 1024 px) unless set ([`Backend::set_images_per_pass`]): large enough that
/// the big layers fill the device, small enough that a batch of hundreds makes a pipeline of many passes, so only
/// the last pass's download is not hidden behind compute. Not tuned on a GPU yet.
const PASS_PIXELS: usize = 1 << 25;
/// A layer whose output in one pass has fewer pixels than this leaves a large GPU partly idle: the tensor-core
/// kernels take tiles of 128 pixels, so 2^16 pixels are 512 tiles per group of output channels, 2-8 waves of two
/// blocks per SM on an H100 or H200 for a 128-512-channel layer. At 32 images per pass, the 4-32 px blocks of a
/// 1024 px network are under it; 4 and 8 px make a fraction of one wave. Such blocks run first over many images
/// at once (the front), and each pass takes the rest of the network from what they left.
const FILL_PIXELS: usize = 1 << 16;
/// Bytes per task when the host moves staged images into the result (parallel: one core copies ~10 GB/s,
/// less than a PCIe 5 link delivers).
const HOST_COPY_BYTES: usize = 1 << 22;

/// The first `layers` of the table (whole blocks), run over more images at once than a pass takes.
struct Front {
    layers: usize,
    pass: FrontPass,
}

/// A pass whose download is in flight: its device images (kept alive until the copy has read them), the staging
/// buffer it goes to, and its place in the batch.
struct InFlight<D: Device> {
    images: D::Buffer,
    slot: usize,
    first: usize,
    count: usize,
}

pub struct CudaBackend<D: Device> {
    dev: D,
    net: Network,
    mapping: DeviceMapping<D>,
    synthesis: DeviceSynthesis<D>,
    /// Bytes per stored activation in the precision's mode.
    activation_bytes: usize,
    /// Images per synthesis pass; shrinks for good after an out-of-memory error.
    chunk_limit: AtomicUsize,
    /// Images per front pass ([`FILL_PIXELS`]); shrinks for good after an out-of-memory error.
    front_limit: AtomicUsize,
    /// Images per pass set by the caller in place of [`PASS_PIXELS`]' number; 0 for that.
    pass_images: AtomicUsize,
    /// Two staging buffers, kept across calls: one receives a pass's download while the host empties the other.
    staging: Mutex<[Option<D::Staging>; 2]>,
}

impl<D: Device> CudaBackend<D> {
    pub fn new(dev: D, net: Network, precision: Precision) -> Result<Self> {
        let mapping = DeviceMapping::new(&dev, &net)?;
        let synthesis = DeviceSynthesis::with_precision(&dev, &net, ConvPath::Fast, precision)?;
        Ok(CudaBackend {
            dev,
            net,
            mapping,
            synthesis,
            activation_bytes: precision.activation_dtype().size(),
            chunk_limit: AtomicUsize::new(usize::MAX),
            front_limit: AtomicUsize::new(usize::MAX),
            pass_images: AtomicUsize::new(0),
            staging: Mutex::new([None, None]),
        })
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Device memory one image needs while `layers` run: the largest layer's input and output activations (in
    /// the precision's activation type), the largest per-sample weights and three f32 images at `resolution`
    /// (the skip image, a ToRGB output, and the previous pass's image waiting for its download), doubled for the
    /// kernels' other temporaries and allocator slack.
    fn bytes_per_image(&self, layers: &[SynthesisLayer], resolution: usize) -> usize {
        let largest = layers
            .iter()
            .map(|l| {
                let res_in = if l.up == 2 {
                    l.resolution / 2
                } else {
                    l.resolution
                };
                l.in_channels * res_in * res_in + l.out_channels * l.resolution * l.resolution
            })
            .max()
            .unwrap_or(0);
        let img = self.net.img_channels * resolution * resolution;
        2 * (self.activation_bytes * largest + self.synthesis.sample_weight_bytes() + 4 * 3 * img)
    }

    /// Device memory one image needs during a whole-network pass.
    fn pass_bytes_per_image(&self) -> usize {
        self.bytes_per_image(&self.net.layers, self.net.resolution)
    }

    /// Images per pass: at most [`PASS_PIXELS`] (or the number set in its place) and what 80% of the free device
    /// memory holds, within the limit set by earlier out-of-memory errors.
    fn plan_chunk(&self, n: usize) -> usize {
        let by_memory = self
            .dev
            .free_memory()
            .map(|free| (free / 5 * 4 / self.pass_bytes_per_image().max(1)).max(1))
            .unwrap_or(n);
        let by_pipeline = match self.pass_images.load(Ordering::Relaxed) {
            0 => (PASS_PIXELS / (self.net.resolution * self.net.resolution).max(1)).max(1),
            set => set,
        };
        n.min(by_memory)
            .min(by_pipeline)
            .min(self.chunk_limit.load(Ordering::Relaxed))
            .max(1)
    }

    /// The front for `n` images in passes of `chunk`: the whole blocks from the first whose layers all leave
    /// fewer than [`FILL_PIXELS`] pixels in a pass (never the last block), run over as many of the images as
    /// [`PASS_PIXELS`] and 80% of the free memory allow, beside one pass, within the limit set by earlier
    /// out-of-memory errors. `None` when that is no more than a pass.
    fn plan_front(&self, n: usize, chunk: usize) -> Option<Front> {
        if n <= chunk {
            return None;
        }
        let layers = &self.net.layers;
        let mut split = None;
        for (i, l) in layers.iter().enumerate() {
            if chunk.saturating_mul(l.resolution * l.resolution) >= FILL_PIXELS {
                break;
            }
            if l.kind == LayerKind::ToRgb && i + 1 < layers.len() {
                split = Some((i + 1, l.resolution));
            }
        }
        let (end, resolution) = split?;
        let front = &layers[..end];
        // What the front leaves for the passes: its last conv's output and the image so far.
        let carried = front
            .iter()
            .rfind(|l| l.kind == LayerKind::Conv)
            .map_or(0, |l| self.activation_bytes * l.out_channels)
            + 4 * self.net.img_channels;
        let per_image = self.bytes_per_image(front, resolution) + carried * resolution * resolution;
        let by_memory = self
            .dev
            .free_memory()
            .map(|free| {
                (free / 5 * 4).saturating_sub(chunk * self.pass_bytes_per_image())
                    / per_image.max(1)
            })
            .unwrap_or(n);
        let images = n
            .min(by_memory)
            .min(PASS_PIXELS / (resolution * resolution))
            .min(self.front_limit.load(Ordering::Relaxed));
        (images > chunk).then_some(Front {
            layers: end,
            pass: FrontPass { resolution, images },
        })
    }

    /// The most images one synthesis pass takes now (after out-of-memory errors have lowered it).
    pub fn images_per_pass_limit(&self) -> usize {
        self.chunk_limit.load(Ordering::Relaxed)
    }

    /// Caps the images per pass (at least 1), e.g. to leave device memory to other work; out-of-memory errors
    /// may lower it further.
    pub fn set_images_per_pass_limit(&self, images: usize) {
        self.chunk_limit.store(images.max(1), Ordering::Relaxed);
    }

    /// Queues the download of a finished pass's first `bytes` into staging buffer `slot` (grown when too small).
    fn start_download(
        &self,
        staging: &mut [Option<D::Staging>; 2],
        slot: usize,
        images: &D::Buffer,
        bytes: usize,
    ) -> Result<()> {
        let slot = &mut staging[slot];
        if slot
            .as_ref()
            .is_none_or(|s| self.dev.staging_len(s) < bytes)
        {
            // Free the old buffer first: page-locked memory is scarce.
            *slot = None;
            *slot = Some(self.dev.alloc_staging(bytes)?);
        }
        let buffer = slot.as_mut().expect("allocated above");
        self.dev.download_async(images, buffer, bytes)
    }

    /// Waits for a pass's download and moves its images (`image_bytes` each) into their place in `out`.
    fn finish_download(
        &self,
        staging: &[Option<D::Staging>; 2],
        pass: InFlight<D>,
        image_bytes: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let bytes = pass.count * image_bytes;
        let buffer = staging[pass.slot].as_ref().expect("a download went there");
        let src = &self.dev.staged(buffer)?[..bytes];
        let dst = &mut out[pass.first * image_bytes..(pass.first + pass.count) * image_bytes];
        dst.par_chunks_mut(HOST_COPY_BYTES)
            .zip(src.par_chunks(HOST_COPY_BYTES))
            .for_each(|(d, s)| d.copy_from_slice(s));
        drop(pass.images);
        Ok(())
    }

    /// Synthesizes `ws` in passes, each pass's images turned by `finish` into the device buffer that is
    /// downloaded (`value_bytes` per image value) into its rows of `out`. Where the first blocks would leave the
    /// device idle in a pass, they run first over a group of several passes' images ([`Self::plan_front`]).
    fn run_passes(
        &self,
        ws: &Tensor,
        noise: NoiseMode,
        out: &mut [u8],
        value_bytes: usize,
        finish: impl Fn(DeviceTensor<D>) -> Result<D::Buffer>,
    ) -> Result<()> {
        let (dev, net, synthesis) = (&self.dev, &self.net, &self.synthesis);
        let n = ws.shape[0];
        let image_bytes = net.img_channels * net.resolution * net.resolution * value_bytes;
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        let mut in_flight: Option<InFlight<D>> = None;
        let (mut start, mut slot) = (0, 0);
        while start < n {
            let chunk = self.plan_chunk(n - start);
            // A group: the front's images (the layers before `rest` run over them at once, and each pass starts
            // from its rows of what they left), or one pass of the whole network.
            let (group, rest, carry) = match self.plan_front(n - start, chunk) {
                Some(front) => {
                    let images = front.pass.images;
                    match synthesis.synthesize_layers(
                        dev,
                        net,
                        &ws.slice_rows(start, start + images),
                        from_image(noise, start),
                        0..front.layers,
                        None,
                    ) {
                        Ok(carry) => (images, front.layers, Some(carry)),
                        // Out of memory: halve the front (for this call and the next) and plan again.
                        Err(Error::DeviceMemory(_)) => {
                            self.front_limit.store(images / 2, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => (chunk, 0, None),
            };
            let mut done = 0;
            while done < group {
                let chunk = self.plan_chunk(group - done);
                let first = start + done;
                let images = carry
                    .as_ref()
                    .map(|carry| carry.rows(dev, done, done + chunk))
                    .transpose()
                    .and_then(|part| {
                        synthesis
                            .synthesize_layers(
                                dev,
                                net,
                                &ws.slice_rows(first, first + chunk),
                                from_image(noise, first),
                                rest..net.layers.len(),
                                part,
                            )?
                            .image()
                    })
                    .and_then(&finish);
                let images = match images {
                    Ok(images) => images,
                    // Out of memory: halve the pass (for this call and the next) and retry, down to one image.
                    Err(Error::DeviceMemory(_)) if chunk > 1 => {
                        self.chunk_limit.store(chunk / 2, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // The previous pass's staging buffer is the other one, so this download can start at once; the
                // host then empties the previous pass while the device works on this one.
                self.start_download(&mut staging, slot, &images, chunk * image_bytes)?;
                if let Some(pass) = in_flight.take() {
                    self.finish_download(&staging, pass, image_bytes, out)?;
                }
                in_flight = Some(InFlight {
                    images,
                    slot,
                    first,
                    count: chunk,
                });
                slot ^= 1;
                done += chunk;
            }
            start += group;
        }
        if let Some(pass) = in_flight.take() {
            self.finish_download(&staging, pass, image_bytes, out)?;
        }
        Ok(())
    }
}

/// `noise` for a part of the batch that starts at image `first`: random streams go by the image's index in the
/// whole batch.
fn from_image(noise: NoiseMode, first: usize) -> NoiseMode {
    match noise {
        NoiseMode::Random { seed, first_image } => NoiseMode::Random {
            seed,
            first_image: first_image + first,
        },
        other => other,
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    fn name(&self) -> String {
        self.dev.describe()
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn peak_device_memory(&self) -> Option<usize> {
        Some(self.dev.memory_meter().peak())
    }

    fn images_per_pass(&self, n: usize) -> Option<usize> {
        Some(self.plan_chunk(n))
    }

    fn front_pass(&self, n: usize) -> Option<FrontPass> {
        self.plan_front(n, self.plan_chunk(n)).map(|f| f.pass)
    }

    fn set_images_per_pass(&self, images: usize) -> Result<()> {
        if images == 0 {
            crate::bail!("images per pass must be at least 1");
        }
        self.pass_images.store(images, Ordering::Relaxed);
        Ok(())
    }

    fn map(&self, z: &Tensor, truncation: Truncation) -> Result<Tensor> {
        self.mapping.map(&self.dev, z, truncation)
    }

    /// The front (as [`Self::synthesize`] would run it for `ws`) over its images, then one pass.
    fn profile(&self, ws: &Tensor) -> Result<Option<Vec<LayerProfile>>> {
        let (dev, net, synthesis) = (&self.dev, &self.net, &self.synthesis);
        check_ws(net, ws)?;
        let n = ws.shape[0];
        let chunk = self.plan_chunk(n);
        let (mut rows, rest, part) = match self.plan_front(n, chunk) {
            Some(front) => {
                let (rows, carry) = synthesis.profile(
                    dev,
                    net,
                    &ws.slice_rows(0, front.pass.images),
                    NoiseMode::Const,
                    0..front.layers,
                    None,
                )?;
                (rows, front.layers, Some(carry.rows(dev, 0, chunk)?))
            }
            None => (Vec::new(), 0, None),
        };
        let pass = ws.slice_rows(0, chunk);
        let layers = rest..net.layers.len();
        let (pass_rows, _) = synthesis.profile(dev, net, &pass, NoiseMode::Const, layers, part)?;
        rows.extend(pass_rows);
        Ok(Some(rows))
    }

    fn synthesize(&self, ws: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        let net = &self.net;
        check_ws(net, ws)?;
        let shape = [
            ws.shape[0],
            net.img_channels,
            net.resolution,
            net.resolution,
        ];
        let mut out = vec![0f32; shape.iter().product()];
        self.run_passes(ws, noise, bytemuck::cast_slice_mut(&mut out), 4, |images| {
            Ok(images.buf)
        })?;
        Tensor::new(shape.to_vec(), out)
    }

    fn synthesize_u8(&self, ws: &Tensor, noise: NoiseMode) -> Result<Images8> {
        let net = &self.net;
        check_ws(net, ws)?;
        let (n, c, res) = (ws.shape[0], net.img_channels, net.resolution);
        let mut out = vec![0u8; n * c * res * res];
        self.run_passes(ws, noise, &mut out, 1, |images| {
            images_to_u8_on(&self.dev, &images)
        })?;
        Images8::new(n, res, res, c, out)
    }
}
