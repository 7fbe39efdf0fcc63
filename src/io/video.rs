//! Clips: equally sized 8-bit frames written as an animated GIF (pure Rust), an MP4 (ffmpeg, frames piped to its
//! stdin) or a folder of PNG frames (`frame0000.png`, ...). Files go to a temporary sibling and are renamed into
//! place by `finish`; a writer dropped unfinished removes its temporary file.

use crate::bail;
use crate::error::{Error, Result};
use crate::io::image::write_png;
use crate::io::temp_sibling;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

/// Output kinds, chosen by the path: `.gif`, `.mp4`, or a folder (an existing one, or a name without extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipKind {
    Gif,
    Mp4,
    Frames,
}

impl ClipKind {
    pub fn of(path: &Path) -> Result<ClipKind> {
        match path.extension().and_then(|e| e.to_str()) {
            _ if path.is_dir() => Ok(ClipKind::Frames),
            None => Ok(ClipKind::Frames),
            Some("gif") => Ok(ClipKind::Gif),
            Some("mp4") => Ok(ClipKind::Mp4),
            Some(_) => bail!(
                "{}: unsupported clip type; use .gif, .mp4 or a folder of PNG frames",
                path.display()
            ),
        }
    }
}

/// Frame geometry: `channels` is 1 (gray) or 3 (RGB), pixels interleaved row by row.
#[derive(Clone, Copy, Debug)]
pub struct FrameSize {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Fail early, before any work, when `.mp4` output cannot be written.
pub fn check_ffmpeg() -> Result<()> {
    match Command::new("ffmpeg")
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "ffmpeg was not found on PATH: .mp4 output needs it (install the `ffmpeg` package, e.g. apt-get install \
             ffmpeg), or write a .gif or a folder of PNG frames"
        ),
        Err(e) => bail!("cannot run ffmpeg: {e}"),
    }
}

pub struct ClipWriter {
    path: PathBuf,
    size: FrameSize,
    frames: usize,
    out: Out,
}

enum Out {
    Gif {
        tmp: PathBuf,
        encoder: Option<gif::Encoder<BufWriter<File>>>,
        delay: u16,
    },
    Mp4 {
        tmp: PathBuf,
        child: Child,
        stdin: Option<ChildStdin>,
        stderr: Option<JoinHandle<String>>,
    },
    Frames,
}

impl ClipWriter {
    pub fn create(path: &Path, kind: ClipKind, size: FrameSize, fps: f32) -> Result<ClipWriter> {
        if !(size.channels == 1 || size.channels == 3) || size.width == 0 || size.height == 0 {
            bail!(
                "{}: cannot write {}x{} frames with {} channels",
                path.display(),
                size.width,
                size.height,
                size.channels
            );
        }
        if !(fps.is_finite() && fps > 0.0) {
            bail!("frame rate must be a positive number, got {fps}");
        }
        let out = match kind {
            ClipKind::Gif => {
                let (Ok(w), Ok(h)) = (u16::try_from(size.width), u16::try_from(size.height)) else {
                    bail!(
                        "{}: {}x{} frames are too large for GIF (65535 at most)",
                        path.display(),
                        size.width,
                        size.height
                    );
                };
                let tmp = temp_sibling(path);
                let file = File::create(&tmp).map_err(|e| Error::io(path, e))?;
                let gif_err = |e| gif_error(path, e);
                let started =
                    gif::Encoder::new(BufWriter::new(file), w, h, &[]).and_then(|mut enc| {
                        enc.set_repeat(gif::Repeat::Infinite)?;
                        Ok(enc)
                    });
                let encoder = match started {
                    Ok(enc) => enc,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(gif_err(e));
                    }
                };
                Out::Gif {
                    tmp,
                    encoder: Some(encoder),
                    // GIF delays are in hundredths of a second: 30 fps becomes 3 (33 fps).
                    delay: (100.0 / fps).round().clamp(1.0, u16::MAX as f32) as u16,
                }
            }
            ClipKind::Mp4 => spawn_ffmpeg(path, size, fps)?,
            ClipKind::Frames => {
                std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
                Out::Frames
            }
        };
        Ok(ClipWriter {
            path: path.to_path_buf(),
            size,
            frames: 0,
            out,
        })
    }

    /// Append one frame of `width * height * channels` bytes.
    pub fn push(&mut self, pixels: &[u8]) -> Result<()> {
        let FrameSize {
            width,
            height,
            channels,
        } = self.size;
        if pixels.len() != width * height * channels {
            bail!(
                "{}: frame of {} bytes, expected {width}x{height}x{channels}",
                self.path.display(),
                pixels.len()
            );
        }
        let path = &self.path;
        match &mut self.out {
            Out::Gif { encoder, delay, .. } => {
                let rgb = to_rgb(pixels, channels);
                // Quantised to a palette of its own (NeuQuant, speed 10 of 1..30).
                let mut frame = gif::Frame::from_rgb_speed(width as u16, height as u16, &rgb, 10);
                frame.delay = *delay;
                let enc = encoder.as_mut().expect("open until finish");
                enc.write_frame(&frame).map_err(|e| gif_error(path, e))?;
            }
            Out::Mp4 { stdin, .. } => {
                let rgb = to_rgb(pixels, channels);
                let sent = stdin.as_mut().expect("open until finish").write_all(&rgb);
                if let Err(e) = sent {
                    // ffmpeg stopped reading: its own message says why.
                    let io = Error::io(&self.path, e);
                    return Err(self.ffmpeg_failure().unwrap_or(io));
                }
            }
            Out::Frames => {
                let name = path.join(format!("frame{:04}.png", self.frames));
                write_png(name, width, height, channels, pixels)?;
            }
        }
        self.frames += 1;
        Ok(())
    }

    /// Close the clip and move it into place; returns the number of frames.
    pub fn finish(mut self) -> Result<usize> {
        let path = self.path.clone();
        if let Out::Gif { encoder, .. } = &mut self.out {
            let enc = encoder.take().expect("open until finish");
            let w = enc.into_inner().map_err(|e| gif_error(&path, e))?;
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        if let Some(err) = self.ffmpeg_failure() {
            return Err(err);
        }
        if let Out::Gif { tmp, .. } | Out::Mp4 { tmp, .. } = &self.out {
            std::fs::rename(tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        // Finished: nothing left for Drop to clean up.
        self.out = Out::Frames;
        Ok(self.frames)
    }

    /// Wait for ffmpeg; its error (with the last line it printed) when it failed.
    fn ffmpeg_failure(&mut self) -> Option<Error> {
        let Out::Mp4 {
            child,
            stdin,
            stderr,
            ..
        } = &mut self.out
        else {
            return None;
        };
        drop(stdin.take());
        let status = child.wait();
        let log = stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Ok(s) if s.success() => None,
            Ok(s) => {
                let last = log.lines().rev().find(|l| !l.trim().is_empty());
                Some(Error::invalid(format!(
                    "{}: ffmpeg failed ({s}){}",
                    self.path.display(),
                    last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
                )))
            }
            Err(e) => Some(Error::io(&self.path, e)),
        }
    }
}

impl Drop for ClipWriter {
    fn drop(&mut self) {
        match &mut self.out {
            Out::Gif { tmp, encoder, .. } => {
                drop(encoder.take());
                let _ = std::fs::remove_file(tmp);
            }
            Out::Mp4 {
                tmp, child, stdin, ..
            } => {
                drop(stdin.take());
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(tmp);
            }
            Out::Frames => {}
        }
    }
}

fn gif_error(path: &Path, e: gif::EncodingError) -> Error {
    match e {
        gif::EncodingError::Io(e) => Error::io(path, e),
        other => Error::format(path, format!("GIF encoding failed: {other}")),
    }
}

/// Gray frames are widened to RGB for the GIF and MP4 encoders.
fn to_rgb(pixels: &[u8], channels: usize) -> std::borrow::Cow<'_, [u8]> {
    if channels == 3 {
        return pixels.into();
    }
    pixels
        .iter()
        .flat_map(|&v| [v, v, v])
        .collect::<Vec<_>>()
        .into()
}

fn spawn_ffmpeg(path: &Path, size: FrameSize, fps: f32) -> Result<Out> {
    let tmp = temp_sibling(path);
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
        .args(["-s", &format!("{}x{}", size.width, size.height)])
        .args(["-framerate", &fps.to_string(), "-i", "pipe:0"])
        // yuv420p (what players expect) needs even sizes.
        .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4"])
        .arg(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                check_ffmpeg().err().unwrap_or_else(|| Error::io(path, e))
            }
            _ => Error::invalid(format!("{}: cannot run ffmpeg: {e}", path.display())),
        })?;
    let stdin = child.stdin.take();
    // Drained on a thread so that a chatty ffmpeg never blocks on a full pipe while we write frames.
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut log = String::new();
            let _ = err.read_to_string(&mut log);
            log
        })
    });
    Ok(Out::Mp4 {
        tmp,
        child,
        stdin,
        stderr,
    })
}
