//! Builds zip archives byte by byte for the tests, so fixtures need no Python: classic or zip64 records, STORED or
//! DEFLATE members.
#![allow(dead_code)]

use mmengine::io::zip::crc32;

pub struct Member<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub deflate: bool,
}

pub fn member<'a>(name: &'a str, data: &'a [u8], deflate: bool) -> Member<'a> {
    Member {
        name,
        data,
        deflate,
    }
}

fn u16le(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u32le(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u64le(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A zip archive of `members`; with `zip64` every size and offset goes through the zip64 records.
pub fn build_zip(members: &[Member<'_>], zip64: bool, comment: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let payload = if m.deflate {
            miniz_oxide::deflate::compress_to_vec(m.data, 6)
        } else {
            m.data.to_vec()
        };
        let crc = crc32(m.data);
        let method = if m.deflate { 8 } else { 0 };
        let offset = out.len() as u64;
        let (csize, usize_) = (payload.len() as u64, m.data.len() as u64);
        let small = |v: u64| if zip64 { 0xffff_ffff } else { v as u32 };
        let mut local_extra = Vec::new();
        let mut central_extra = Vec::new();
        if zip64 {
            u16le(&mut local_extra, 1);
            u16le(&mut local_extra, 16);
            u64le(&mut local_extra, usize_);
            u64le(&mut local_extra, csize);
            u16le(&mut central_extra, 1);
            u16le(&mut central_extra, 24);
            u64le(&mut central_extra, usize_);
            u64le(&mut central_extra, csize);
            u64le(&mut central_extra, offset);
        }
        u32le(&mut out, 0x0403_4b50);
        u16le(&mut out, 45);
        u16le(&mut out, 0);
        u16le(&mut out, method);
        u32le(&mut out, 0); // time, date
        u32le(&mut out, crc);
        u32le(&mut out, small(csize));
        u32le(&mut out, small(usize_));
        u16le(&mut out, m.name.len() as u16);
        u16le(&mut out, local_extra.len() as u16);
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(&local_extra);
        out.extend_from_slice(&payload);

        u32le(&mut central, 0x0201_4b50);
        u16le(&mut central, 45);
        u16le(&mut central, 45);
        u16le(&mut central, 0);
        u16le(&mut central, method);
        u32le(&mut central, 0);
        u32le(&mut central, crc);
        u32le(&mut central, small(csize));
        u32le(&mut central, small(usize_));
        u16le(&mut central, m.name.len() as u16);
        u16le(&mut central, central_extra.len() as u16);
        u16le(&mut central, 0); // comment
        u16le(&mut central, 0); // disk
        u16le(&mut central, 0); // internal attributes
        u32le(&mut central, 0); // external attributes
        u32le(&mut central, small(offset));
        central.extend_from_slice(m.name.as_bytes());
        central.extend_from_slice(&central_extra);
    }
    let cd_offset = out.len() as u64;
    let cd_size = central.len() as u64;
    out.extend_from_slice(&central);
    let count = members.len() as u64;
    if zip64 {
        let eocd64 = out.len() as u64;
        u32le(&mut out, 0x0606_4b50);
        u64le(&mut out, 44);
        u16le(&mut out, 45);
        u16le(&mut out, 45);
        u32le(&mut out, 0);
        u32le(&mut out, 0);
        u64le(&mut out, count);
        u64le(&mut out, count);
        u64le(&mut out, cd_size);
        u64le(&mut out, cd_offset);
        u32le(&mut out, 0x0706_4b50);
        u32le(&mut out, 0);
        u64le(&mut out, eocd64);
        u32le(&mut out, 1);
    }
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    let count16 = if zip64 { 0xffff } else { count as u16 };
    u16le(&mut out, count16);
    u16le(&mut out, count16);
    u32le(&mut out, if zip64 { 0xffff_ffff } else { cd_size as u32 });
    u32le(&mut out, if zip64 { 0xffff_ffff } else { cd_offset as u32 });
    u16le(&mut out, comment.len() as u16);
    out.extend_from_slice(comment);
    out
}

/// `.npy` bytes with any version, descr, order and shape text, so headers numpy would write (and ones it would
/// not) can be built by hand. The header is padded to 64 bytes like numpy does.
pub fn npy_bytes(major: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    let prefix = if major == 1 { 10 } else { 12 };
    while (prefix + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        u16le(&mut out, dict.len() as u16);
    } else {
        u32le(&mut out, dict.len() as u32);
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
