//! Decoding photographs into the 8-bit RGB image that CLIP preprocessing starts from.
//!
//! The policy follows what the Python reference does with PIL
//! (`ImageOps.exif_transpose(Image.open(p)).convert("RGB")`):
//!
//! * the format is guessed from the content (magic bytes), never from the extension;
//! * JPEG, PNG, GIF (first frame), WebP and BMP are supported;
//! * grayscale is replicated into R, G and B; alpha is dropped, not composited (like PIL's
//!   `convert("RGB")`); 16-bit samples become 8-bit as `round(v / 257)`;
//! * the EXIF orientation is applied, so a photo taken with the camera turned is upright.
//!
//! Decoding is bounded against hostile headers: the dimensions are checked against
//! [`MAX_SIDE`] and the decoded size against [`MAX_DECODED_BYTES`] *before* any pixel buffer is
//! allocated, so a 60-byte PNG that claims 100000×100000 pixels fails at once.
//!
//! Every error is one line that starts with the input's name, for example
//! `photos/x.jpg: not an image (unrecognised format)`.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use thiserror::Error;

/// Smallest accepted width and height. Anything smaller is an icon or a broken capture and
/// would be upscaled more than 14× to reach CLIP's 224 pixels.
pub const MIN_SIDE: u32 = 16;

/// Largest accepted width and height (a 268-megapixel square; far above any camera).
pub const MAX_SIDE: u32 = 16384;

/// Upper bound for the decoder's pixel buffer (and the image crate's other allocations).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// Largest image file read. A file is sniffed (its first bytes must be a supported format) and
/// its size checked before it is read, and the read stops here whatever the size claimed (a
/// FIFO or a device has none). No supported file of an image within [`MAX_DECODED_BYTES`]
/// comes near it.
pub const MAX_FILE_BYTES: u64 = MAX_DECODED_BYTES;

/// Bytes `image::guess_format` needs to tell the supported formats apart (WebP: 12).
const SNIFF_BYTES: usize = 32;

/// Longest decoder message kept in an error, so that errors stay one short line.
const MAX_DETAIL_CHARS: usize = 160;

/// Why an image could not be loaded. `Display` is a single line starting with the input name.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{name}: cannot read: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: empty file (0 bytes)")]
    Empty { name: String },
    #[error("{name}: not an image (unrecognised format)")]
    UnknownFormat { name: String },
    #[error("{name}: unsupported image format {format} (supported: JPEG, PNG, GIF, WebP, BMP)")]
    UnsupportedFormat { name: String, format: String },
    #[error("{name}: unsupported {format} image: {detail}")]
    UnsupportedFeature { name: String, format: &'static str, detail: String },
    #[error("{name}: corrupt or truncated {format} data: {detail}")]
    Corrupt { name: String, format: &'static str, detail: String },
    #[error("{name}: file larger than the {limit} MiB an image file may have", limit = MAX_FILE_BYTES / (1024 * 1024))]
    FileTooLarge { name: String },
    #[error("{name}: dimensions {width}×{height} exceed the limit of {max}×{max}", max = MAX_SIDE)]
    TooLarge { name: String, width: u32, height: u32 },
    #[error(
        "{name}: decoding {width}×{height} needs {mib} MiB, more than the {limit} MiB limit",
        mib = needed / (1024 * 1024),
        limit = MAX_DECODED_BYTES / (1024 * 1024)
    )]
    TooMuchMemory { name: String, width: u32, height: u32, needed: u64 },
    #[error(
        "{name}: image is {width}×{height} pixels, smaller than the {min}-pixel minimum",
        min = MIN_SIDE
    )]
    TooSmall { name: String, width: u32, height: u32 },
}

/// Reads and decodes the image file at `path` (see the module docs for the policy).
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let name = path.display().to_string();
    let bytes = read_image_file(path, &name)?;
    decode_rgb(&bytes, &name)
}

/// The bytes of an image file, read only once its first bytes are a supported format and only
/// up to [`MAX_FILE_BYTES`]: `/dev/zero`, a video or a 2 GB file named `.jpg` cost a few bytes'
/// read, not the file.
fn read_image_file(path: &Path, name: &str) -> Result<Vec<u8>, ImageError> {
    let io = |source| ImageError::Io { name: name.to_string(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file).take(SNIFF_BYTES as u64).read_to_end(&mut head).map_err(io)?;
    if head.is_empty() {
        return Err(ImageError::Empty { name: name.to_string() });
    }
    guess_format(&head, name)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge { name: name.to_string() });
    }
    let mut bytes = head;
    bytes.reserve(size.saturating_sub(bytes.len() as u64) as usize);
    // One byte past the limit tells a file at the limit from one over it.
    let rest = MAX_FILE_BYTES + 1 - bytes.len() as u64;
    file.take(rest).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge { name: name.to_string() });
    }
    Ok(bytes)
}

/// Decodes an in-memory image file; `name` (usually the path) prefixes every error.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty { name: name.to_string() });
    }
    let format = guess_format(bytes, name)?;
    let label = format_label(format);
    let corrupt = |e: image::ImageError| classify(e, name, label);

    if format == ImageFormat::Jpeg {
        // The JPEG decoder is lenient and fills a cut-off scan with grey; refuse such files the
        // way PIL does ("image file is truncated") instead of captioning half a picture.
        check_jpeg_complete(bytes, name)?;
    }

    // The header alone first, without limits: on 32-bit boards the decoders apply the memory
    // limit while reading the header already, and a huge image must still be named as such.
    // The png crate refuses a huge header with "memory limit exceeded" on 32-bit targets even
    // without limits, so PNG's IHDR (always the first chunk) is read directly.
    let mut probe = ImageReader::with_format(Cursor::new(bytes), format);
    probe.no_limits();
    let header = if format == ImageFormat::Png { png_dimensions(bytes) } else { probe.into_dimensions().ok() };
    if let Some((width, height)) = header {
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(ImageError::TooLarge { name: name.to_string(), width, height });
        }
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    // A broken EXIF block should not cost the picture: fall back to "as stored".
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let needed = peak_bytes(decoder.total_bytes(), decoder.color_type(), width, height, orientation);
    check_dimensions(name, width, height, needed)?;
    let decoded = DynamicImage::from_decoder(decoder).map_err(corrupt)?;

    let mut oriented = DynamicImage::ImageRgb8(to_rgb8(decoded));
    oriented.apply_orientation(orientation);
    Ok(match oriented {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Width and height from a PNG's IHDR chunk: 8-byte signature, length, "IHDR", then the two
/// big-endian sizes.
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((be(16), be(20)))
}

/// Limits handed to the image crate; the dimension check is ours (for a clearer message).
fn decoder_limits() -> Limits {
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

fn guess_format(bytes: &[u8], name: &str) -> Result<ImageFormat, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat { name: name.to_string() })?;
    match format {
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP | ImageFormat::Bmp => Ok(format),
        other => Err(ImageError::UnsupportedFormat { name: name.to_string(), format: format_label(other).to_string() }),
    }
}

fn format_label(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Tga => "TGA",
        ImageFormat::Dds => "DDS",
        ImageFormat::Hdr => "HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Farbfeld => "Farbfeld",
        _ => "other",
    }
}

/// The most bytes decoding holds at once: the decoder's buffer, plus the 8-bit RGB copy while
/// converting (unless it decodes to RGB8 already), or two RGB images while a rotation copies
/// one into the other (EXIF orientations that swap the sides).
fn peak_bytes(
    decoded: u64,
    color: image::ColorType,
    width: u32,
    height: u32,
    orientation: image::metadata::Orientation,
) -> u64 {
    use image::metadata::Orientation::*;
    let rgb = u64::from(width) * u64::from(height) * 3;
    let converting = if color == image::ColorType::Rgb8 { decoded } else { decoded.saturating_add(rgb) };
    let rotating =
        if matches!(orientation, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH) { 2 * rgb } else { rgb };
    converting.max(rotating)
}

/// Refuses too large (before allocating) and too small images.
fn check_dimensions(name: &str, width: u32, height: u32, needed: u64) -> Result<(), ImageError> {
    let name = || name.to_string();
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ImageError::TooLarge { name: name(), width, height });
    }
    if needed > MAX_DECODED_BYTES {
        return Err(ImageError::TooMuchMemory { name: name(), width, height, needed });
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(ImageError::TooSmall { name: name(), width, height });
    }
    Ok(())
}

/// Maps an image-crate error to ours, keeping the decoder's message on one short line.
fn classify(err: image::ImageError, name: &str, format: &'static str) -> ImageError {
    let name = name.to_string();
    match err {
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt { name, format, detail: "unexpected end of file".into() }
        }
        image::ImageError::IoError(source) => ImageError::Io { name, source },
        image::ImageError::Limits(e) => ImageError::Corrupt { name, format, detail: one_line(&e.to_string()) },
        image::ImageError::Unsupported(e) => {
            ImageError::UnsupportedFeature { name, format, detail: one_line(&e.to_string()) }
        }
        image::ImageError::Decoding(e) => {
            // "Format error decoding Png: <cause>": the cause alone is what helps.
            let detail = match std::error::Error::source(&e) {
                Some(cause) => cause.to_string(),
                None => e.to_string(),
            };
            ImageError::Corrupt { name, format, detail: one_line(&detail) }
        }
        other => ImageError::Corrupt { name, format, detail: one_line(&other.to_string()) },
    }
}

/// Collapses whitespace runs (newlines included) and caps the length.
fn one_line(text: &str) -> String {
    let mut out = crate::text::excerpt(&crate::text::collapse_whitespace(text), MAX_DETAIL_CHARS);
    if out.is_empty() {
        out = "decoder error".into();
    }
    out
}

/// A JPEG whose entropy-coded data was cut off has no end-of-image marker (FF D9) after its
/// first scan header (FF DA). Inside scan data a 0xFF byte is always followed by 0x00 or a
/// restart marker, so FF D9 there can only be the real end marker.
fn check_jpeg_complete(bytes: &[u8], name: &str) -> Result<(), ImageError> {
    let truncated =
        |detail: &str| ImageError::Corrupt { name: name.to_string(), format: "JPEG", detail: detail.to_string() };
    let scan = first_scan_offset(bytes).ok_or_else(|| truncated("no image data (start-of-scan marker missing)"))?;
    let has_end = bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
    if has_end {
        Ok(())
    } else {
        Err(truncated("file ends before the end-of-image marker (truncated)"))
    }
}

/// Walks the marker segments from SOI to the first SOS; returns the offset of the SOS marker.
fn first_scan_offset(bytes: &[u8]) -> Option<usize> {
    let mut at = 2; // after SOI (FF D8), which guess_format has seen
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            0xDA => return Some(at),
            // Stand-alone markers without a length field.
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
                at = at.checked_add(2 + len)?;
            }
        }
    }
}

/// Converts whatever the decoder produced to 8-bit RGB without a copy when it already is.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(g) => expand(w, h, g.as_raw(), 1, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(g) => expand(w, h, g.as_raw(), 2, |p| [p[0]; 3]),
        DynamicImage::ImageRgba8(c) => expand(w, h, c.as_raw(), 4, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma16(g) => expand(w, h, g.as_raw(), 1, |p| [to8(p[0]); 3]),
        DynamicImage::ImageLumaA16(g) => expand(w, h, g.as_raw(), 2, |p| [to8(p[0]); 3]),
        DynamicImage::ImageRgb16(c) => expand(w, h, c.as_raw(), 3, |p| [to8(p[0]), to8(p[1]), to8(p[2])]),
        DynamicImage::ImageRgba16(c) => expand(w, h, c.as_raw(), 4, |p| [to8(p[0]), to8(p[1]), to8(p[2])]),
        // Float images are not produced by the enabled decoders; the image crate's conversion
        // (clamp to [0, 1], scale, round) is the sensible meaning if one ever appears.
        other => other.to_rgb8(),
    }
}

/// `round(v / 257)`: maps 0..=65535 onto 0..=255 exactly like the reference (no ties: 257 is odd).
fn to8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

fn expand<T: Copy>(w: u32, h: u32, raw: &[T], channels: usize, f: impl Fn(&[T]) -> [u8; 3]) -> RgbImage {
    let mut out = Vec::with_capacity(raw.len() / channels * 3);
    for px in raw.chunks_exact(channels) {
        out.extend_from_slice(&f(px));
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn sixteen_bit_rounds_like_the_reference() {
        assert_eq!(to8(0), 0);
        assert_eq!(to8(128), 0);
        assert_eq!(to8(129), 1);
        assert_eq!(to8(257), 1);
        assert_eq!(to8(385), 1);
        assert_eq!(to8(386), 2);
        assert_eq!(to8(65535), 255);
        for v in 0..=255u16 {
            assert_eq!(to8(v * 257), v as u8);
        }
    }

    #[test]
    fn gray_and_alpha_become_plain_rgb() {
        let gray = image::GrayImage::from_fn(20, 18, |x, y| image::Luma([(x * 10 + y) as u8]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png), "g.png").unwrap();
        assert_eq!(rgb.dimensions(), (20, 18));
        assert_eq!(rgb.get_pixel(7, 3).0, [73, 73, 73]);

        // Alpha is dropped, not blended: a fully transparent pixel keeps its colour.
        let rgba = image::RgbaImage::from_fn(17, 16, |x, _| image::Rgba([x as u8, 50, 200, 0]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png), "a.png").unwrap();
        assert_eq!(rgb.get_pixel(9, 5).0, [9, 50, 200]);
    }

    #[test]
    fn errors_are_one_line_and_name_the_input() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty file (0 bytes)"),
            (b"hello, not an image\n", "not an image (unrecognised format)"),
            (b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00", "corrupt or truncated JPEG data"),
        ];
        for (bytes, expected) in cases {
            let err = decode_rgb(bytes, "dir/pic.jpg").unwrap_err().to_string();
            assert!(err.starts_with("dir/pic.jpg: "), "{err}");
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let tiny = encode(DynamicImage::new_rgb8(1, 1), ImageFormat::Png);
        let err = decode_rgb(&tiny, "t.png").unwrap_err().to_string();
        assert_eq!(err, "t.png: image is 1×1 pixels, smaller than the 16-pixel minimum");
        let thin = encode(DynamicImage::new_rgb8(300, 15), ImageFormat::Png);
        assert!(matches!(decode_rgb(&thin, "t.png"), Err(ImageError::TooSmall { width: 300, height: 15, .. })));
    }

    #[test]
    fn io_errors_name_the_path() {
        let err = load_rgb(Path::new("/nonexistent/dir/x.jpg")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/dir/x.jpg: cannot read: "), "{err}");
    }

    #[test]
    fn files_are_sniffed_and_their_size_checked_before_they_are_read() {
        // A device that never ends: its first bytes are no image, so nothing more is read.
        let err = load_rgb(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(err, "/dev/zero: not an image (unrecognised format)");
        let dir = tempfile::tempdir().unwrap();
        let err = load_rgb(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: cannot read: ", dir.path().display())), "{err}");
        // A JPEG's first bytes, then a (sparse) size one byte over the limit.
        let big = dir.path().join("big.jpg");
        let file = std::fs::File::create(&big).unwrap();
        std::io::Write::write_all(&mut &file, &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0]).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = load_rgb(&big).unwrap_err().to_string();
        assert_eq!(err, format!("{}: file larger than the 512 MiB an image file may have", big.display()));
        file.set_len(0).unwrap();
        assert!(matches!(load_rgb(&big), Err(ImageError::Empty { .. })));
    }

    /// A PNG of a signature, an IHDR chunk and an empty IDAT: a header that passes every check
    /// the decoder makes before it allocates, and no pixel data.
    fn png_header(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
        let chunk = |kind: &[u8], data: &[u8]| {
            let body = [kind, data].concat();
            let crc = body.iter().fold(!0u32, |mut c, &b| {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
                }
                c
            });
            [&(data.len() as u32).to_be_bytes()[..], &body, &(!crc).to_be_bytes()].concat()
        };
        let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[bit_depth, color_type, 0, 0, 0]].concat();
        [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &[])].concat()
    }

    #[test]
    fn the_memory_limit_counts_the_rgb_copy_made_while_converting() {
        // 8000×8000 16-bit RGBA: 488 MiB decoded, under the limit alone, 671 MiB with the
        // 8-bit RGB image converted from it.
        let err = decode_rgb(&png_header(8000, 8000, 16, 6), "deep.png").unwrap_err().to_string();
        assert_eq!(err, "deep.png: decoding 8000×8000 needs 671 MiB, more than the 512 MiB limit");
        // 8-bit RGB needs no copy: it passes the check and fails for its missing pixel data.
        let err = decode_rgb(&png_header(8000, 8000, 8, 2), "rgb.png").unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
        let rotated = peak_bytes(300, image::ColorType::Rgb8, 10, 10, image::metadata::Orientation::Rotate90);
        assert_eq!(rotated, 600, "a rotation holds two RGB images");
    }

    #[test]
    fn one_line_collapses_and_caps() {
        assert_eq!(one_line("a\n  b\r\n\tc "), "a b c");
        assert_eq!(one_line("x".repeat(500).as_str()).chars().count(), MAX_DETAIL_CHARS + 1);
        assert_eq!(one_line(" \n"), "decoder error");
    }

    #[test]
    fn jpeg_scan_search_skips_segments() {
        // SOI, APP1 whose payload contains FF D9 (e.g. a thumbnail), SOS, no EOI after it.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34]);
        assert_eq!(first_scan_offset(&jpeg), Some(10));
        assert!(check_jpeg_complete(&jpeg, "x").is_err());
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert!(check_jpeg_complete(&jpeg, "x").is_ok());
        assert_eq!(first_scan_offset(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF]), None);
    }
}
