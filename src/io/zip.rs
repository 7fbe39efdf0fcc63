//! A minimal ZIP reader over a byte slice (a memory map): the end-of-central-directory record (ZIP64 too, which
//! torch.save writes for large files), the central directory and local headers. STORED entries (torch.save,
//! np.savez) are returned as borrowed slices; DEFLATE entries (np.savez_compressed) are inflated. Every offset and
//! size is checked against the data, so corrupt or hostile archives give an error, never a panic.

use crate::bail;
use crate::error::Result;
use std::borrow::Cow;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const STORED: u16 = 0;
const DEFLATE: u16 = 8;
/// DEFLATE cannot compress better than about 1032:1; a larger declared ratio is a lie (or a bomb).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// True if the data starts like a ZIP file.
pub fn is_zip(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04")
}

#[derive(Clone, Debug)]
pub struct ZipEntry {
    pub name: String,
    pub method: u16,
    pub compressed_size: u64,
    pub size: u64,
    local_offset: u64,
}

pub struct ZipArchive<'a> {
    data: &'a [u8],
    entries: Vec<ZipEntry>,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn truncated(what: &str) -> crate::Error {
    crate::Error::invalid(format!("corrupt zip archive: truncated {what}"))
}

impl<'a> ZipArchive<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let (count, cd_size, cd_offset) = find_directory(data)?;
        let end = cd_offset
            .checked_add(cd_size)
            .filter(|&e| e <= data.len() as u64);
        if end.is_none() {
            bail!(
                "corrupt zip archive: central directory [{cd_offset}, +{cd_size}) lies beyond the file ({} bytes)",
                data.len()
            );
        }
        let cd = &data[cd_offset as usize..(cd_offset + cd_size) as usize];
        // Each central record is at least 46 bytes, which bounds a hostile entry count.
        if count > (cd.len() / 46) as u64 {
            bail!("corrupt zip archive: {count} entries cannot fit a {cd_size}-byte central directory");
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        for _ in 0..count {
            let (entry, next) = central_entry(cd, at)?;
            entries.push(entry);
            at = next;
        }
        Ok(ZipArchive { data, entries })
    }

    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The raw (still compressed, if compressed) bytes of an entry.
    fn raw(&self, e: &ZipEntry) -> Result<&'a [u8]> {
        let lh = usize::try_from(e.local_offset).unwrap_or(usize::MAX);
        if u32_at(self.data, lh) != Some(LOCAL_SIG) {
            bail!(
                "corrupt zip archive: no local header for '{}' at offset {}",
                e.name,
                e.local_offset
            );
        }
        let name_len = u16_at(self.data, lh + 26).ok_or_else(|| truncated("local header"))?;
        let extra_len = u16_at(self.data, lh + 28).ok_or_else(|| truncated("local header"))?;
        let start = lh + 30 + name_len as usize + extra_len as usize;
        let end = usize::try_from(e.compressed_size)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            bail!(
                "corrupt zip archive: entry '{}' ({} bytes at offset {start}) lies beyond the file ({} bytes)",
                e.name,
                e.compressed_size,
                self.data.len()
            );
        };
        Ok(&self.data[start..end])
    }

    /// An entry's contents: borrowed when stored, inflated when deflated.
    pub fn read(&self, name: &str) -> Result<Cow<'a, [u8]>> {
        let Some(e) = self.get(name) else {
            bail!("zip archive has no entry '{name}'");
        };
        let raw = self.raw(e)?;
        match e.method {
            STORED => {
                if e.size != e.compressed_size {
                    bail!(
                        "corrupt zip archive: stored entry '{name}' has size {} but {} stored bytes",
                        e.size,
                        e.compressed_size
                    );
                }
                Ok(Cow::Borrowed(raw))
            }
            DEFLATE => {
                let max = (raw.len() as u64).saturating_mul(MAX_DEFLATE_RATIO) + 64;
                if e.size > max {
                    bail!(
                        "corrupt zip archive: entry '{name}' claims to inflate {} bytes to {}",
                        raw.len(),
                        e.size
                    );
                }
                let out = miniz_oxide::inflate::decompress_to_vec_with_limit(raw, e.size as usize)
                    .map_err(|err| {
                        crate::Error::invalid(format!(
                            "corrupt zip archive: entry '{name}' does not inflate ({err})"
                        ))
                    })?;
                if out.len() as u64 != e.size {
                    bail!(
                        "corrupt zip archive: entry '{name}' inflates to {} bytes, expected {}",
                        out.len(),
                        e.size
                    );
                }
                Ok(Cow::Owned(out))
            }
            m => bail!("zip entry '{name}' uses compression method {m}; only stored (0) and deflate (8) are supported"),
        }
    }
}

/// Entry count, central directory size and offset, from the (ZIP64) end-of-central-directory record.
fn find_directory(data: &[u8]) -> Result<(u64, u64, u64)> {
    // The EOCD is 22 bytes plus a comment of at most 65535 bytes, at the very end.
    if data.len() < 22 {
        bail!("corrupt zip archive: only {} bytes", data.len());
    }
    let lowest = data.len().saturating_sub(22 + 65535);
    let Some(eocd) = (lowest..=data.len() - 22)
        .rev()
        .find(|&i| u32_at(data, i) == Some(EOCD_SIG))
    else {
        bail!("corrupt zip archive: no end-of-central-directory record (truncated file?)");
    };
    let count = u16_at(data, eocd + 10).ok_or_else(|| truncated("EOCD"))? as u64;
    let size = u32_at(data, eocd + 12).ok_or_else(|| truncated("EOCD"))? as u64;
    let offset = u32_at(data, eocd + 16).ok_or_else(|| truncated("EOCD"))? as u64;
    if count != 0xffff && size != 0xffff_ffff && offset != 0xffff_ffff {
        return Ok((count, size, offset));
    }
    // ZIP64: a 20-byte locator just before the EOCD points to the ZIP64 EOCD record.
    let loc = eocd
        .checked_sub(20)
        .filter(|&l| u32_at(data, l) == Some(ZIP64_LOCATOR_SIG));
    let Some(loc) = loc else {
        bail!("corrupt zip archive: ZIP64 sizes without a ZIP64 locator");
    };
    let rec = u64_at(data, loc + 8).ok_or_else(|| truncated("ZIP64 locator"))?;
    let rec = usize::try_from(rec).unwrap_or(usize::MAX);
    if u32_at(data, rec) != Some(ZIP64_EOCD_SIG) {
        bail!(
            "corrupt zip archive: ZIP64 end-of-central-directory record not found at offset {rec}"
        );
    }
    let field = |off: usize| u64_at(data, rec + off).ok_or_else(|| truncated("ZIP64 EOCD"));
    Ok((field(32)?, field(40)?, field(48)?))
}

/// One central-directory record at `at`; returns it and the offset of the next one.
fn central_entry(cd: &[u8], at: usize) -> Result<(ZipEntry, usize)> {
    if u32_at(cd, at) != Some(CENTRAL_SIG) {
        bail!("corrupt zip archive: bad central directory record at offset {at}");
    }
    let f16 = |o: usize| u16_at(cd, at + o).ok_or_else(|| truncated("central directory"));
    let f32 = |o: usize| u32_at(cd, at + o).ok_or_else(|| truncated("central directory"));
    let method = f16(10)?;
    let mut compressed_size = f32(20)? as u64;
    let mut size = f32(24)? as u64;
    let name_len = f16(28)? as usize;
    let extra_len = f16(30)? as usize;
    let comment_len = f16(32)? as usize;
    let mut local_offset = f32(42)? as u64;
    let name_start = at + 46;
    let extra_start = name_start + name_len;
    let next = extra_start + extra_len + comment_len;
    let (Some(name), Some(extra)) = (
        cd.get(name_start..extra_start),
        cd.get(extra_start..extra_start + extra_len),
    ) else {
        return Err(truncated("central directory"));
    };
    if next > cd.len() {
        return Err(truncated("central directory"));
    }
    let name = String::from_utf8_lossy(name).into_owned();
    // ZIP64 extended information (0x0001): the 64-bit values of the fields that are saturated, in this order.
    let mut e = 0;
    while e + 4 <= extra.len() {
        let id = u16_at(extra, e).unwrap_or(0);
        let len = u16_at(extra, e + 2).unwrap_or(0) as usize;
        let body = extra
            .get(e + 4..e + 4 + len)
            .ok_or_else(|| truncated("extra field"))?;
        if id == 1 {
            let mut p = 0;
            let mut next64 = || {
                let v = u64_at(body, p).ok_or_else(|| truncated("ZIP64 extra field"));
                p += 8;
                v
            };
            if size == 0xffff_ffff {
                size = next64()?;
            }
            if compressed_size == 0xffff_ffff {
                compressed_size = next64()?;
            }
            if local_offset == 0xffff_ffff {
                local_offset = next64()?;
            }
        }
        e += 4 + len;
    }
    Ok((
        ZipEntry {
            name,
            method,
            compressed_size,
            size,
            local_offset,
        },
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-entry-at-a-time archive writer for the tests (no CRC: the reader does not check it).
    fn archive(entries: &[(&str, u16, &[u8], u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for &(name, method, body, size) in entries {
            let offset = out.len() as u32;
            out.extend(LOCAL_SIG.to_le_bytes());
            out.extend([20, 0, 0, 0]);
            out.extend(method.to_le_bytes());
            out.extend([0u8; 8]);
            out.extend((body.len() as u32).to_le_bytes());
            out.extend((size as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(body);
            cd.extend(CENTRAL_SIG.to_le_bytes());
            cd.extend([20, 0, 20, 0, 0, 0]);
            cd.extend(method.to_le_bytes());
            cd.extend([0u8; 8]);
            cd.extend((body.len() as u32).to_le_bytes());
            cd.extend((size as u32).to_le_bytes());
            cd.extend((name.len() as u16).to_le_bytes());
            cd.extend([0u8; 12]);
            cd.extend(offset.to_le_bytes());
            cd.extend(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend(&cd);
        out.extend(EOCD_SIG.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend((cd.len() as u32).to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend([0u8; 2]);
        out
    }

    #[test]
    fn stored_and_deflated_entries() {
        let text = b"hello hello hello hello hello hello".repeat(20);
        let packed = miniz_oxide::deflate::compress_to_vec(&text, 6);
        let zip = archive(&[
            ("a/stored", STORED, b"abc", 3),
            ("a/deflated", DEFLATE, &packed, text.len() as u64),
        ]);
        let z = ZipArchive::parse(&zip).unwrap();
        assert_eq!(z.entries().len(), 2);
        assert!(matches!(z.read("a/stored").unwrap(), Cow::Borrowed(b"abc")));
        assert_eq!(z.read("a/deflated").unwrap().as_ref(), text.as_slice());
        assert!(z.read("missing").is_err());
    }

    #[test]
    fn corrupt_archives_are_errors() {
        let zip = archive(&[("x", STORED, b"abcdef", 6)]);
        // Every truncation and every single-byte corruption must give Ok or Err, never panic.
        for n in 0..zip.len() {
            if let Ok(z) = ZipArchive::parse(&zip[..n]) {
                let _ = z.read("x");
            }
        }
        for i in 0..zip.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut bad = zip.clone();
                bad[i] = v;
                if let Ok(z) = ZipArchive::parse(&bad) {
                    let _ = z.read("x");
                }
            }
        }
        let unsupported = archive(&[("x", 12, b"abcdef", 6)]);
        let err = ZipArchive::parse(&unsupported)
            .unwrap()
            .read("x")
            .unwrap_err();
        assert!(err.to_string().contains("method 12"), "{err}");
        let bomb = archive(&[("x", DEFLATE, b"abc", 1 << 31)]);
        assert!(ZipArchive::parse(&bomb).unwrap().read("x").is_err());
    }
}
