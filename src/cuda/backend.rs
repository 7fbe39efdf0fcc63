//! The CUDA generator as a [`Backend`]: the network uploaded once, mapping and synthesis on the device, and
//! batches larger than device memory split into chunks planned from the free memory.

use super::device::Device;
use super::gemm::Precision;
use super::mapping::DeviceMapping;
use super::synthesis::DeviceSynthesis;
use crate::backend::{Backend, NoiseMode, Truncation};
use crate::cpu::ConvPath;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct CudaBackend<D: Device> {
    dev: D,
    net: Network,
    mapping: DeviceMapping<D>,
    synthesis: DeviceSynthesis<D>,
    /// Images per synthesis pass; shrinks for good after an out-of-memory error.
    chunk_limit: AtomicUsize,
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
            chunk_limit: AtomicUsize::new(usize::MAX),
        })
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Device memory one image needs during synthesis: the largest layer's input and output activations and the
    /// skip image, doubled for the kernels' temporaries and allocator slack.
    fn bytes_per_image(&self) -> usize {
        let net = &self.net;
        let largest = net
            .layers
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
        let img = net.img_channels * net.resolution * net.resolution;
        2 * 4 * (largest + 2 * img)
    }

    /// Images per pass: what 80% of the free device memory holds, within the limit set by earlier
    /// out-of-memory errors.
    fn plan_chunk(&self, n: usize) -> usize {
        let by_memory = self
            .dev
            .free_memory()
            .map(|free| (free / 5 * 4 / self.bytes_per_image().max(1)).max(1))
            .unwrap_or(n);
        n.min(by_memory)
            .min(self.chunk_limit.load(Ordering::Relaxed))
            .max(1)
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

    fn map(&self, z: &Tensor, truncation: Truncation) -> Result<Tensor> {
        self.mapping.map(&self.dev, z, truncation)
    }

    fn synthesize(&self, ws: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        let n = ws.shape.first().copied().unwrap_or(0);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let chunk = self.plan_chunk(n - start);
            let part_noise = match noise {
                NoiseMode::Random { seed, first_image } => NoiseMode::Random {
                    seed,
                    first_image: first_image + start,
                },
                other => other,
            };
            let part_ws = ws.slice_rows(start, start + chunk);
            match self
                .synthesis
                .synthesize(&self.dev, &self.net, &part_ws, part_noise)
            {
                Ok(images) => {
                    parts.push(images);
                    start += chunk;
                }
                // Out of memory: halve the chunk (for this call and the next) and retry, down to one image.
                Err(Error::DeviceMemory(_)) if chunk > 1 => {
                    self.chunk_limit.store(chunk / 2, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        Tensor::cat_rows(&parts)
    }
}
