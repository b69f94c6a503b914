//! Framing: client frames end in NUL or LF (a CR before the LF is dropped),
//! empty frames are skipped, and a frame over the limit is an error that the
//! server answers with errno 8 before closing. Server frames end in LF.
//!
//! Built on tokio-util's `AnyDelimiterCodec`, which bounds how much it buffers
//! while looking for a terminator, so a peer that never sends one cannot grow
//! memory past the limit.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame exceeded the configured maximum length.
    #[error("frame longer than {0} bytes")]
    TooLarge(usize),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// NUL/LF frame codec with a maximum frame length.
///
/// Decodes into raw bytes: UTF-8 and JSON validity are the caller's business,
/// because each gets its own errno and must not close the connection.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    inner: AnyDelimiterCodec,
    max: usize,
}

impl FrameCodec {
    /// A codec that accepts frames of up to `max` bytes, terminator and any
    /// trailing CR excluded.
    pub fn new(max: usize) -> Self {
        // One extra byte so that a maximal frame followed by CR LF still fits;
        // the exact limit is checked after the CR is removed.
        FrameCodec {
            inner: AnyDelimiterCodec::new_with_max_length(
                b"\0\n".to_vec(),
                b"\n".to_vec(),
                max + 1,
            ),
            max,
        }
    }

    /// The configured maximum frame length.
    pub fn max_length(&self) -> usize {
        self.max
    }

    fn finish(&self, mut frame: Bytes) -> Result<Option<Bytes>, FrameError> {
        if frame.last() == Some(&b'\r') {
            frame.truncate(frame.len() - 1);
        }
        if frame.len() > self.max {
            return Err(FrameError::TooLarge(self.max));
        }
        Ok(Some(frame))
    }

    fn map_err(&self, e: AnyDelimiterCodecError) -> FrameError {
        match e {
            AnyDelimiterCodecError::MaxChunkLengthExceeded => FrameError::TooLarge(self.max),
            AnyDelimiterCodecError::Io(e) => FrameError::Io(e),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.inner.decode(buf).map_err(|e| self.map_err(e))? {
                None => return Ok(None),
                Some(f) if f.is_empty() || f[..] == b"\r"[..] => continue,
                Some(f) => return self.finish(f),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.inner.decode_eof(buf).map_err(|e| self.map_err(e))? {
                None => return Ok(None),
                Some(f) if f.is_empty() || f[..] == b"\r"[..] => continue,
                Some(f) => return self.finish(f),
            }
        }
    }
}

/// Server-side encoding: the frame's bytes followed by LF.
impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(item.len() + 1);
        dst.put_slice(item);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut FrameCodec, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(f) = codec.decode(&mut buf)? {
                out.push(f.to_vec());
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn nul_lf_crlf_and_empty_frames() {
        let mut c = FrameCodec::new(100);
        let out = decode_all(&mut c, &[b"a\0b\nc\r\n\0\0\n\r\nd"]).unwrap();
        assert_eq!(
            out,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
    }

    #[test]
    fn exact_limit_passes_and_one_more_fails() {
        let mut c = FrameCodec::new(4);
        assert_eq!(
            decode_all(&mut c, &[b"abcd\r\n"]).unwrap(),
            vec![b"abcd".to_vec()]
        );
        let mut c = FrameCodec::new(4);
        assert!(matches!(
            decode_all(&mut c, &[b"abcde\n"]),
            Err(FrameError::TooLarge(4))
        ));
        // No terminator at all: the error comes as soon as the limit is passed.
        let mut c = FrameCodec::new(4);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(c.decode(&mut buf), Err(FrameError::TooLarge(4))));
    }

    #[test]
    fn encoder_appends_lf() {
        let mut c = FrameCodec::new(10);
        let mut dst = BytesMut::new();
        c.encode(&b"{}"[..], &mut dst).unwrap();
        assert_eq!(&dst[..], b"{}\n");
    }

    proptest! {
        /// However the byte stream is cut into reads, the same frames come out.
        #[test]
        fn splitting_never_changes_frames(
            frames in proptest::collection::vec("[a-z{}\":0-9 ]{0,40}", 0..20),
            terms in proptest::collection::vec(0u8..3, 20),
            cuts in proptest::collection::vec(1usize..16, 1..50),
        ) {
            let mut stream = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                stream.extend_from_slice(f.as_bytes());
                match terms[i % terms.len()] {
                    0 => stream.push(0),
                    1 => stream.push(b'\n'),
                    _ => stream.extend_from_slice(b"\r\n"),
                }
            }
            let expected: Vec<Vec<u8>> = frames.iter().filter(|f| !f.is_empty()).map(|f| f.as_bytes().to_vec()).collect();
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                chunks.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
            }
            let mut c = FrameCodec::new(64);
            prop_assert_eq!(decode_all(&mut c, &chunks).unwrap(), expected);
        }

        /// Arbitrary bytes never panic the decoder, and no frame it yields is
        /// over the limit or contains a terminator.
        #[test]
        fn arbitrary_bytes_are_safe(data in proptest::collection::vec(any::<u8>(), 0..400), max in 1usize..64) {
            let mut c = FrameCodec::new(max);
            let mut buf = BytesMut::from(&data[..]);
            loop {
                match c.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= max);
                        prop_assert!(!f.contains(&0) && !f.contains(&b'\n'));
                        prop_assert!(!f.is_empty());
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge(_)) => break,
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
        }
    }
}
