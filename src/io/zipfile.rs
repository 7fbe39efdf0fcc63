//! A minimal read-only zip reader over bytes in memory (a map or a buffer): enough for `.npz` and torch checkpoints.
//! Reads the central directory (zip64 aware), then STORED or DEFLATE members; every offset and size is checked
//! against the buffer, so hostile archives give errors, not panics. Errors are `Error::Invalid`; callers attach the
//! file with `Error::in_file`.

use crate::bail;
use crate::error::Result;
use std::borrow::Cow;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

const STORED: u16 = 0;
const DEFLATE: u16 = 8;

struct Member {
    name: String,
    method: u16,
    flags: u16,
    crc32: u32,
    compressed_size: u64,
    uncompressed_size: u64,
    local_header_offset: u64,
}

pub struct ZipArchive<'a> {
    bytes: &'a [u8],
    members: Vec<Member>,
}

/// Little-endian field access that reports truncation instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at(bytes: &'a [u8], pos: u64, what: &str) -> Result<Self> {
        match usize::try_from(pos) {
            Ok(pos) if pos <= bytes.len() => Ok(Reader { bytes, pos }),
            _ => bail!(
                "zip {what} at offset {pos} lies outside the {} byte archive",
                bytes.len()
            ),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => bail!("zip archive is truncated inside the {what}"),
        }
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
}

impl<'a> ZipArchive<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let eocd = find_eocd(bytes)?;
        let mut r = Reader::at(bytes, eocd as u64 + 4, "end of central directory")?;
        let what = "end of central directory";
        let _disk = r.u16(what)?;
        let _cd_disk = r.u16(what)?;
        let _entries_here = r.u16(what)?;
        let mut count = r.u16(what)? as u64;
        let mut cd_size = r.u32(what)? as u64;
        let mut cd_offset = r.u32(what)? as u64;
        if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
            (count, cd_size, cd_offset) = read_eocd64(bytes, eocd)?;
        }
        let cd_end = cd_offset.checked_add(cd_size);
        if cd_end.is_none_or(|end| end > eocd as u64) {
            bail!(
                "zip central directory ({cd_size} bytes at offset {cd_offset}) does not fit before its end record"
            );
        }
        // The count is untrusted: never reserve more entries than the directory could physically hold.
        let mut members = Vec::with_capacity(count.min(cd_size / CENTRAL_LEN as u64) as usize);
        let mut r = Reader::at(bytes, cd_offset, "central directory")?;
        for _ in 0..count {
            members.push(read_central_entry(&mut r)?);
        }
        Ok(ZipArchive { bytes, members })
    }

    /// Member names in archive order.
    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// The uncompressed bytes of a member: borrowed for STORED members, inflated for DEFLATE ones. The CRC-32 is
    /// verified either way, so corruption surfaces here rather than as a garbled tensor.
    pub fn read(&self, name: &str) -> Result<Cow<'a, [u8]>> {
        let Some(m) = self.members.iter().find(|m| m.name == name) else {
            bail!("zip archive has no member '{name}'");
        };
        if m.flags & 1 != 0 {
            bail!("zip member '{name}' is encrypted");
        }
        let mut r = Reader::at(self.bytes, m.local_header_offset, "local header")?;
        let what = "local header";
        if r.u32(what)? != LOCAL_SIG {
            bail!(
                "zip member '{name}' has no local header at offset {}",
                m.local_header_offset
            );
        }
        // Offsets below are relative to the end of the signature.
        let fixed = r.take(LOCAL_LEN - 4, what)?;
        let name_len = u16::from_le_bytes([fixed[22], fixed[23]]) as usize;
        let extra_len = u16::from_le_bytes([fixed[24], fixed[25]]) as usize;
        r.take(name_len + extra_len, what)?;
        // Sizes come from the central directory: local headers may hold zeros when a data descriptor follows.
        let Ok(csize) = usize::try_from(m.compressed_size) else {
            bail!("zip member '{name}' is too large for this machine");
        };
        let data = r.take(csize, &format!("data of member '{name}'"))?;
        let out: Cow<'a, [u8]> = match m.method {
            STORED => {
                if m.compressed_size != m.uncompressed_size {
                    bail!("stored zip member '{name}' has different compressed and uncompressed sizes");
                }
                Cow::Borrowed(data)
            }
            DEFLATE => {
                let Ok(size) = usize::try_from(m.uncompressed_size) else {
                    bail!("zip member '{name}' is too large for this machine");
                };
                // The limit bounds memory by the declared size; the output grows as it inflates, so a false
                // declared size cannot make us allocate it up front.
                let out = miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
                    .map_err(|e| {
                        crate::error::Error::invalid(format!(
                            "zip member '{name}' does not inflate ({e})"
                        ))
                    })?;
                if out.len() != size {
                    bail!(
                        "zip member '{name}' inflates to {} bytes, the directory says {size}",
                        out.len()
                    );
                }
                Cow::Owned(out)
            }
            other => bail!("zip member '{name}' uses compression method {other}; only stored and deflate are supported"),
        };
        let crc = crc32(&out);
        if crc != m.crc32 {
            bail!(
                "zip member '{name}' is corrupt (CRC-32 {crc:08x}, expected {:08x})",
                m.crc32
            );
        }
        Ok(out)
    }
}

/// The end-of-central-directory record is the last thing in the file, followed only by a comment of up to 64 KiB.
fn find_eocd(bytes: &[u8]) -> Result<usize> {
    if bytes.len() < EOCD_LEN {
        bail!("not a zip archive ({} bytes)", bytes.len());
    }
    let last = bytes.len() - EOCD_LEN;
    let first = last.saturating_sub(u16::MAX as usize);
    for pos in (first..=last).rev() {
        if bytes[pos..pos + 4] == EOCD_SIG.to_le_bytes() {
            let comment_len = u16::from_le_bytes([bytes[pos + 20], bytes[pos + 21]]) as usize;
            if pos + EOCD_LEN + comment_len <= bytes.len() {
                return Ok(pos);
            }
        }
    }
    bail!("not a zip archive (no end of central directory record)")
}

/// Zip64: the real entry count, directory size and offset live in a record that a locator just before the classic
/// end record points to.
fn read_eocd64(bytes: &[u8], eocd: usize) -> Result<(u64, u64, u64)> {
    let Some(loc) = eocd.checked_sub(20) else {
        bail!("zip64 archive lacks its end of central directory locator");
    };
    let what = "zip64 locator";
    let mut r = Reader::at(bytes, loc as u64, what)?;
    if r.u32(what)? != EOCD64_LOCATOR_SIG {
        bail!("zip64 archive lacks its end of central directory locator");
    }
    let _disk = r.u32(what)?;
    let offset = r.u64(what)?;
    let what = "zip64 end of central directory";
    let mut r = Reader::at(bytes, offset, what)?;
    if r.u32(what)? != EOCD64_SIG {
        bail!("zip64 end of central directory record is missing at offset {offset}");
    }
    let _size = r.u64(what)?;
    r.take(2 + 2 + 4 + 4 + 8, what)?;
    let count = r.u64(what)?;
    let cd_size = r.u64(what)?;
    let cd_offset = r.u64(what)?;
    Ok((count, cd_size, cd_offset))
}

fn read_central_entry(r: &mut Reader<'_>) -> Result<Member> {
    let what = "central directory";
    if r.u32(what)? != CENTRAL_SIG {
        bail!("zip central directory is corrupt (bad entry signature)");
    }
    let f = r.take(CENTRAL_LEN - 4, what)?;
    let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(f[i..i + 4].try_into().unwrap());
    // Offsets below are relative to the end of the signature.
    let flags = u16_at(4);
    let method = u16_at(6);
    let crc32 = u32_at(12);
    let mut compressed_size = u32_at(16) as u64;
    let mut uncompressed_size = u32_at(20) as u64;
    let name_len = u16_at(24) as usize;
    let extra_len = u16_at(26) as usize;
    let comment_len = u16_at(28) as usize;
    let mut local_header_offset = u32_at(38) as u64;
    let name = String::from_utf8_lossy(r.take(name_len, what)?).into_owned();
    let mut extra = r.take(extra_len, what)?;
    r.take(comment_len, what)?;
    // The zip64 extra field holds, in this order, exactly those values whose classic field is saturated.
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = (u16::from_le_bytes([extra[2], extra[3]]) as usize).min(extra.len() - 4);
        if id == 0x0001 {
            let mut z = Reader {
                bytes: &extra[4..4 + len],
                pos: 0,
            };
            let what = "zip64 extra field";
            if uncompressed_size == 0xffff_ffff {
                uncompressed_size = z.u64(what)?;
            }
            if compressed_size == 0xffff_ffff {
                compressed_size = z.u64(what)?;
            }
            if local_header_offset == 0xffff_ffff {
                local_header_offset = z.u64(what)?;
            }
        }
        extra = &extra[4 + len..];
    }
    Ok(Member {
        name,
        method,
        flags,
        crc32,
        compressed_size,
        uncompressed_size,
        local_header_offset,
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 (IEEE, reflected) that zip stores for every member.
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}
