//! Images a person can look at: generator output (float NCHW, roughly [-1, 1]) to 8-bit PNG.
//!
//! The conversion is exactly NVlabs `gen_images.py`: `(img * 127.5 + 128).clamp(0, 255).to(torch.uint8)`, computed
//! in float32 and truncated toward zero, so our PNGs match theirs byte for byte. NaN (which torch leaves to the
//! platform) becomes 0: a broken pixel shows as black rather than as a plausible colour.

use crate::bail;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::path::Path;

/// One generator value to a byte, as NVlabs does it. `as u8` truncates toward zero and maps NaN to 0.
pub fn to_u8(v: f32) -> u8 {
    (v * 127.5 + 128.0).clamp(0.0, 255.0) as u8
}

/// An argument error about an output file (not about its content, which does not exist yet).
fn bad_output(path: &Path, msg: String) -> Error {
    Error::invalid(format!("{}: {msg}", path.display()))
}

/// The dimensions of an image batch `[N, C, H, W]` with C = 1 (grayscale) or 3 (RGB), as (n, c, h, w).
pub fn batch_dims(shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
    let &[n, c, h, w] = shape else {
        bail!("images must be a [N, C, H, W] tensor, got shape {shape:?}");
    };
    if c != 1 && c != 3 {
        bail!("images must have 1 (grayscale) or 3 (RGB) channels, got {c}");
    }
    Ok((n, c, h, w))
}

/// The number of values `dims` hold, `None` where it overflows.
fn values(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Check an image batch tensor ([`batch_dims`], and data that fills its shape). Returns (n, c, h, w).
fn image_dims(images: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = batch_dims(&images.shape)?;
    // The fields are public, so do not trust that data and shape agree.
    if values(&images.shape) != Some(images.data.len()) {
        bail!(
            "image tensor of shape {:?} holds {} values",
            images.shape,
            images.data.len()
        );
    }
    Ok(dims)
}

/// How generator values become bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// NVlabs' `x * 127.5 + 128`, clamped ([`to_u8`]).
    Clamp,
    /// The micromotion paper's: each image stretched to [0, 1] over all its channels, `(x - min) / (max - min)`,
    /// then to bytes as skimage's `img_as_ubyte` does (`rint(x * 255)`, ties to even, in float32). A constant
    /// image becomes 0.
    MinMax,
}

/// Image `index` of an `[N, C, H, W]` batch as interleaved 8-bit pixels (RGB for C = 3, L for C = 1), row by row.
pub fn to_rgb8(images: &Tensor, index: usize) -> Result<Vec<u8>> {
    to_rgb8_with(images, index, Normalize::Clamp)
}

/// [`to_rgb8`] with a choice of [`Normalize`].
pub fn to_rgb8_with(images: &Tensor, index: usize, norm: Normalize) -> Result<Vec<u8>> {
    let (n, c, h, w) = image_dims(images)?;
    if index >= n {
        bail!("image index {index} is out of range for a batch of {n}");
    }
    let len = c * h * w;
    let mut out = vec![0u8; len];
    interleave(
        &images.data[index * len..(index + 1) * len],
        c,
        norm,
        &mut out,
    );
    Ok(out)
}

/// One image's `c` planes to interleaved bytes in `out`.
fn interleave(image: &[f32], c: usize, norm: Normalize, out: &mut [u8]) {
    let plane = image.len() / c;
    let byte: Box<dyn Fn(f32) -> u8> = match norm {
        Normalize::Clamp => Box::new(to_u8),
        Normalize::MinMax => {
            // f32::min/max skip NaN, so one broken pixel does not blank the frame.
            let lo = image.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = image.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let range = hi - lo;
            Box::new(move |v| {
                if range > 0.0 {
                    ((v - lo) / range * 255.0).round_ties_even() as u8
                } else {
                    0
                }
            })
        }
    };
    for ch in 0..c {
        for (p, &v) in image[ch * plane..(ch + 1) * plane].iter().enumerate() {
            out[p * c + ch] = byte(v);
        }
    }
}

/// A batch of 8-bit images, interleaved `[N, H, W, C]` (C = 1 gray or 3 RGB) as PNGs hold them: generator output
/// converted by NVlabs' rule ([`to_u8`]). A render to PNG asks the backend for these, so a GPU downloads a byte per
/// value instead of four.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images8 {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Images8 {
    pub fn new(
        count: usize,
        height: usize,
        width: usize,
        channels: usize,
        data: Vec<u8>,
    ) -> Result<Self> {
        batch_dims(&[count, channels, height, width])?;
        if values(&[count, height, width, channels]) != Some(data.len()) {
            bail!(
                "{count} images of {width}x{height}x{channels} need {} bytes, got {}",
                count
                    .saturating_mul(height)
                    .saturating_mul(width)
                    .saturating_mul(channels),
                data.len()
            );
        }
        Ok(Images8 {
            count,
            height,
            width,
            channels,
            data,
        })
    }

    /// `[N, C, H, W]` generator output converted by [`to_u8`], image by image on every core (the host twin of the
    /// device's `images_to_u8` kernel).
    pub fn from_tensor(images: &Tensor) -> Result<Self> {
        Self::from_tensor_with(images, Normalize::Clamp)
    }

    /// [`Self::from_tensor`] with another normalisation.
    pub fn from_tensor_with(images: &Tensor, norm: Normalize) -> Result<Self> {
        let (n, c, h, w) = image_dims(images)?;
        let len = c * h * w;
        let mut data = vec![0u8; n * len];
        data.par_chunks_mut(len.max(1))
            .zip(images.data.par_chunks(len.max(1)))
            .for_each(|(out, image)| interleave(image, c, norm, out));
        Images8::new(n, h, w, c, data)
    }

    /// Image `index`'s pixels, row by row.
    pub fn image(&self, index: usize) -> &[u8] {
        let len = self.height * self.width * self.channels;
        &self.data[index * len..(index + 1) * len]
    }

    /// The images of `parts` in order, in one batch (all of one size).
    pub fn cat(parts: Vec<Images8>) -> Result<Self> {
        let Some(first) = parts.first() else {
            bail!("no images to join");
        };
        let (h, w, c) = (first.height, first.width, first.channels);
        if let Some(odd) = parts
            .iter()
            .find(|p| (p.height, p.width, p.channels) != (h, w, c))
        {
            bail!(
                "cannot join {w}x{h}x{c} images with {}x{}x{} ones",
                odd.width,
                odd.height,
                odd.channels
            );
        }
        let count = parts.iter().map(|p| p.count).sum();
        let data = parts.into_iter().flat_map(|p| p.data).collect();
        Images8::new(count, h, w, c, data)
    }
}

/// Image `index` of a batch as its own PNG.
pub fn write_image_png(path: impl AsRef<Path>, images: &Images8, index: usize) -> Result<()> {
    let path = path.as_ref();
    if index >= images.count {
        return Err(bad_output(
            path,
            format!(
                "image index {index} is out of range for a batch of {}",
                images.count
            ),
        ));
    }
    write_png(
        path,
        images.width,
        images.height,
        images.channels,
        images.image(index),
    )
}

/// Write 8-bit pixels (`channels` = 1 gray, 3 RGB, 4 RGBA; rows top to bottom) as a PNG, atomically.
pub fn write_png(
    path: impl AsRef<Path>,
    width: usize,
    height: usize,
    channels: usize,
    pixels: &[u8],
) -> Result<()> {
    let path = path.as_ref();
    let color = match channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        _ => {
            return Err(bad_output(
                path,
                format!("cannot write a PNG with {channels} channels (1, 3 or 4)"),
            ))
        }
    };
    let (Ok(w32), Ok(h32)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(bad_output(
            path,
            format!("image of {width}x{height} is too large for PNG"),
        ));
    };
    if width == 0 || height == 0 {
        return Err(bad_output(
            path,
            format!("cannot write an empty {width}x{height} image"),
        ));
    }
    if width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels))
        != Some(pixels.len())
    {
        return Err(bad_output(
            path,
            format!(
                "{width}x{height}x{channels} image needs {} bytes, got {}",
                width.saturating_mul(height).saturating_mul(channels),
                pixels.len()
            ),
        ));
    }
    write_atomic(path, |w| {
        let png_err = |e: png::EncodingError| match e {
            png::EncodingError::IoError(e) => Error::io(path, e),
            other => Error::format(path, format!("PNG encoding failed: {other}")),
        };
        let mut encoder = png::Encoder::new(w, w32, h32);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}

/// Grid shape for `n` images: as square as possible, filled row by row. Returns (cols, rows).
pub fn grid_shape(n: usize) -> (usize, usize) {
    // Smallest cols with cols^2 >= n, i.e. ceil(sqrt(n)), without float rounding doubts.
    let mut cols = (n as f64).sqrt() as usize;
    while cols * cols < n {
        cols += 1;
    }
    let cols = cols.max(1);
    (cols, n.div_ceil(cols))
}

/// Write every image of a batch into one PNG grid (see [`grid_shape`]); empty cells are black.
pub fn write_grid_png(path: impl AsRef<Path>, images: &Images8) -> Result<()> {
    let path = path.as_ref();
    if images.count == 0 {
        return Err(bad_output(
            path,
            "cannot write a grid of zero images".into(),
        ));
    }
    let cells: Vec<&[u8]> = (0..images.count).map(|i| images.image(i)).collect();
    let (grid, grid_w, grid_h) = tile(&cells, images.width, images.height, images.channels);
    write_png(path, grid_w, grid_h, images.channels, &grid)
}

/// Lay out `w x h x c` pixel images in a grid (see [`grid_shape`]); empty cells are black. Returns the pixels and
/// the grid's width and height.
pub fn tile<P: AsRef<[u8]>>(cells: &[P], w: usize, h: usize, c: usize) -> (Vec<u8>, usize, usize) {
    let (cols, rows) = grid_shape(cells.len());
    let (grid_w, grid_h) = (cols * w, rows * h);
    let mut grid = vec![0u8; grid_w * grid_h * c];
    for (i, image) in cells.iter().enumerate() {
        let image = image.as_ref();
        let (x0, y0) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            let dst = ((y0 + y) * grid_w + x0) * c;
            grid[dst..dst + w * c].copy_from_slice(&image[y * w * c..(y + 1) * w * c]);
        }
    }
    (grid, grid_w, grid_h)
}
