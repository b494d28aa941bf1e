//! Splitting a byte stream of concatenated image files into frames, so that any capture pipe can
//! feed `--source -`: `ffmpeg -f v4l2 -i /dev/video0 -f image2pipe -c:v mjpeg -`,
//! `gst-launch-1.0 ... ! jpegenc ! fdsink`, `libcamera-vid --codec mjpeg -o -`, `cat *.jpg`.
//!
//! JPEG is framed by walking its marker segments (so an EXIF thumbnail's own SOI/EOI inside APP1
//! is skipped by length) and scanning entropy-coded data for the EOI marker; PNG by walking its
//! chunks up to IEND. Anything else is skipped up to the next JPEG or PNG signature and reported.

use std::io::{BufRead, ErrorKind};

/// Largest frame accepted; a longer one is skipped (it bounds the memory a bad stream can take).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// One item read from the stream.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// A complete JPEG or PNG file.
    Image(Vec<u8>),
    /// Bytes that were not an image, or an image cut off or too large; `reason` says which.
    Garbage { bytes: usize, reason: String },
}

/// Reads frames from a stream of concatenated JPEG / PNG files.
pub struct FrameReader<R> {
    input: R,
}

/// Why the current frame stopped: end of input, or an I/O error.
enum Stop {
    Eof,
    Io(std::io::Error),
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(input: R) -> Self {
        FrameReader { input }
    }

    /// The next image or piece of garbage; `Ok(None)` at a clean end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Chunk>> {
        let mut frame = Vec::new();
        let result = match self.peek_signature()? {
            None => return Ok(None),
            Some(Kind::Jpeg) => self.read_jpeg(&mut frame),
            Some(Kind::Png) => self.read_png(&mut frame),
            Some(Kind::Other) => return self.skip_garbage().map(Some),
        };
        match result {
            Ok(()) if frame.len() > MAX_FRAME_BYTES => {
                Ok(Some(Chunk::Garbage { bytes: frame.len(), reason: "frame too large".into() }))
            }
            Ok(()) => Ok(Some(Chunk::Image(frame))),
            Err(Stop::Eof) => {
                Ok(Some(Chunk::Garbage { bytes: frame.len(), reason: "truncated image at end of stream".into() }))
            }
            Err(Stop::Io(e)) => Err(e),
        }
    }

    fn peek_signature(&mut self) -> std::io::Result<Option<Kind>> {
        let buf = fill(&mut self.input)?;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() < PNG_SIGNATURE.len() && buf[0] == PNG_SIGNATURE[0] {
            // A PNG signature split across reads: look at it byte by byte through read_png.
            return Ok(Some(Kind::Png));
        }
        Ok(Some(if buf.starts_with(&[0xff, 0xd8, 0xff]) || buf == [0xff] || buf == [0xff, 0xd8] {
            Kind::Jpeg
        } else if buf.starts_with(&PNG_SIGNATURE) {
            Kind::Png
        } else {
            Kind::Other
        }))
    }

    /// Skips to the next byte that may start a JPEG or PNG.
    fn skip_garbage(&mut self) -> std::io::Result<Chunk> {
        let mut skipped = 0usize;
        loop {
            let buf = fill(&mut self.input)?;
            if buf.is_empty() {
                break;
            }
            // Never stop at offset 0 of the first buffer: that byte is what made us skip.
            let start = usize::from(skipped == 0);
            let found = buf.iter().skip(start).position(|&b| b == 0xff || b == PNG_SIGNATURE[0]).map(|p| p + start);
            match found {
                Some(p) => {
                    self.input.consume(p);
                    skipped += p;
                    break;
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                    skipped += n;
                }
            }
        }
        Ok(Chunk::Garbage { bytes: skipped, reason: "not a JPEG or PNG image".into() })
    }

    fn byte(&mut self, frame: &mut Vec<u8>) -> Result<u8, Stop> {
        let buf = fill(&mut self.input).map_err(Stop::Io)?;
        let b = *buf.first().ok_or(Stop::Eof)?;
        self.input.consume(1);
        // Past the limit keep reading (to find the end of the frame) but stop storing.
        if frame.len() <= MAX_FRAME_BYTES {
            frame.push(b);
        }
        Ok(b)
    }

    fn bytes(&mut self, n: usize, frame: &mut Vec<u8>) -> Result<(), Stop> {
        for _ in 0..n {
            self.byte(frame)?;
        }
        Ok(())
    }

    fn read_jpeg(&mut self, frame: &mut Vec<u8>) -> Result<(), Stop> {
        self.bytes(2, frame)?; // SOI
        loop {
            let mut marker = self.byte(frame)?;
            if marker != 0xff {
                return Ok(()); // not a marker where one must be: end the frame here (decoder reports it)
            }
            while marker == 0xff {
                marker = self.byte(frame)?; // fill bytes
            }
            match marker {
                0xd9 => return Ok(()),          // EOI
                0x01 | 0xd0..=0xd7 => continue, // markers without a length
                _ => {}
            }
            let len = (usize::from(self.byte(frame)?) << 8) | usize::from(self.byte(frame)?);
            self.bytes(len.saturating_sub(2), frame)?;
            if marker == 0xda && self.skip_scan(frame)? {
                return Ok(());
            }
        }
    }

    /// Reads entropy-coded data after SOS up to the next marker. Returns true at EOI; otherwise
    /// the next marker's 0xFF has been read and its code is pushed back by re-reading as a segment.
    fn skip_scan(&mut self, frame: &mut Vec<u8>) -> Result<bool, Stop> {
        loop {
            if self.byte(frame)? != 0xff {
                continue;
            }
            let mut code = self.byte(frame)?;
            while code == 0xff {
                code = self.byte(frame)?;
            }
            match code {
                0x00 | 0xd0..=0xd7 => continue, // stuffed byte, restart marker
                0xd9 => return Ok(true),
                _ => {
                    // Another segment (DHT, SOS of a progressive scan...): read its length and body.
                    let len = (usize::from(self.byte(frame)?) << 8) | usize::from(self.byte(frame)?);
                    self.bytes(len.saturating_sub(2), frame)?;
                    if code != 0xda {
                        return Ok(false);
                    }
                }
            }
        }
    }

    fn read_png(&mut self, frame: &mut Vec<u8>) -> Result<(), Stop> {
        for expected in PNG_SIGNATURE {
            if self.byte(frame)? != expected {
                return Ok(()); // not a PNG after all: the decoder reports it as corrupt
            }
        }
        loop {
            let mut head = [0u8; 8];
            for b in head.iter_mut() {
                *b = self.byte(frame)?;
            }
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            self.bytes(len.saturating_add(4), frame)?; // data + CRC
            if &head[4..8] == b"IEND" {
                return Ok(());
            }
        }
    }
}

enum Kind {
    Jpeg,
    Png,
    Other,
}

/// `fill_buf`, retrying on EINTR.
fn fill<R: BufRead>(input: &mut R) -> std::io::Result<&[u8]> {
    loop {
        match input.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    input.fill_buf()
}

#[cfg(test)]
mod tests {
    use super::{Chunk, FrameReader};

    fn images() -> (Vec<u8>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images");
        (std::fs::read(dir.join("rocket_exif6.jpg")).unwrap(), std::fs::read(dir.join("chelsea.png")).unwrap())
    }

    fn chunks(bytes: &[u8]) -> Vec<Chunk> {
        // A tiny buffer so that markers and signatures straddle reads.
        let mut reader = FrameReader::new(std::io::BufReader::with_capacity(7, bytes));
        std::iter::from_fn(|| reader.next_chunk().unwrap()).collect()
    }

    #[test]
    fn splits_concatenated_jpeg_and_png_files_exactly() {
        let (jpeg, png) = images();
        let stream = [jpeg.clone(), png.clone(), jpeg.clone()].concat();
        assert_eq!(chunks(&stream), vec![Chunk::Image(jpeg.clone()), Chunk::Image(png), Chunk::Image(jpeg)]);
    }

    #[test]
    fn reports_garbage_and_truncation_and_resynchronises() {
        let (jpeg, png) = images();
        let stream = [b"hello world".to_vec(), jpeg.clone(), png[..png.len() / 2].to_vec()].concat();
        let got = chunks(&stream);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Chunk::Garbage { bytes: 11, reason } if reason.contains("not a JPEG")));
        assert_eq!(got[1], Chunk::Image(jpeg));
        assert!(matches!(&got[2], Chunk::Garbage { reason, .. } if reason.contains("truncated")));
    }
}
