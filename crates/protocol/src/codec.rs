//! Framing: client frames end in NUL or LF (a CR before the LF is dropped),
//! empty frames are skipped, and a frame over the limit is an error that the
//! server answers with errno 8 before closing. Server frames end in LF.
//!
//! The decoder looks for a terminator only within the limit (plus room for
//! a CR), so a peer that never sends one cannot grow memory past it, and it
//! resumes each search where the last one stopped, so a frame that arrives
//! in many reads is scanned once. It keeps the behaviour of tokio-util's
//! `AnyDelimiterCodec`, which it replaced because that one tests every byte
//! against a list of terminators (a tenth of the frame path's
//! instructions); a property test checks the two against each other.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

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
    max: usize,
    /// Where the search for the next terminator resumes: the bytes before it
    /// hold none.
    next: usize,
    /// After a frame over the limit: dropping bytes up to the next
    /// terminator.
    discarding: bool,
}

impl FrameCodec {
    /// A codec that accepts frames of up to `max` bytes, terminator and any
    /// trailing CR excluded.
    pub fn new(max: usize) -> Self {
        FrameCodec {
            max,
            next: 0,
            discarding: false,
        }
    }

    /// The longest frame accepted, in bytes.
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

    /// The next chunk up to a terminator, empty ones included.
    fn chunk(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        // A frame of `max` bytes, a CR and the terminator: the longest that
        // may still be good (the exact limit is checked after the CR goes).
        let window = self.max.saturating_add(2);
        loop {
            let read_to = window.min(buf.len());
            let found = memchr::memchr2(0, b'\n', &buf[self.next.min(read_to)..read_to])
                .map(|at| at + self.next);
            match (self.discarding, found) {
                (false, Some(end)) => {
                    self.next = 0;
                    let mut chunk = buf.split_to(end + 1).freeze();
                    chunk.truncate(end);
                    return Ok(Some(chunk));
                }
                (false, None) if buf.len() >= window => {
                    self.discarding = true;
                    return Err(FrameError::TooLarge(self.max));
                }
                (false, None) => {
                    self.next = read_to;
                    return Ok(None);
                }
                (true, Some(end)) => {
                    buf.advance(end + 1);
                    self.discarding = false;
                    self.next = 0;
                }
                (true, None) => {
                    buf.advance(read_to);
                    self.next = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Empty frames (and a lone CR) are keep-alives some clients send.
fn skipped(chunk: &[u8]) -> bool {
    chunk.is_empty() || chunk == b"\r"
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.chunk(buf)? {
                None => return Ok(None),
                Some(f) if skipped(&f) => continue,
                Some(f) => return self.finish(f),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        // What is left without a terminator is the last frame.
        loop {
            let f = match self.chunk(buf)? {
                Some(f) => f,
                None if buf.is_empty() => return Ok(None),
                None => {
                    self.next = 0;
                    buf.split_to(buf.len()).freeze()
                }
            };
            if !skipped(&f) {
                return self.finish(f);
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

    /// `data` cut into reads of the sizes in `cuts`, round and round.
    fn cut<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = data;
        for n in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*n).min(rest.len()));
            chunks.push(now);
            rest = later;
        }
        chunks
    }

    /// The decoder this one replaced (tokio-util's `AnyDelimiterCodec`
    /// with the same CR and empty-frame rules): the two must agree on
    /// every input, however it is cut into reads.
    struct Reference {
        inner: tokio_util::codec::AnyDelimiterCodec,
        max: usize,
    }

    impl Reference {
        fn new(max: usize) -> Self {
            Reference {
                inner: tokio_util::codec::AnyDelimiterCodec::new_with_max_length(
                    b"\0\n".to_vec(),
                    b"\n".to_vec(),
                    max + 1,
                ),
                max,
            }
        }

        fn next(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Vec<u8>>, ()> {
            loop {
                let r = if eof {
                    self.inner.decode_eof(buf)
                } else {
                    self.inner.decode(buf)
                };
                match r.map_err(|_| ())? {
                    None => return Ok(None),
                    Some(f) if f.is_empty() || f[..] == b"\r"[..] => continue,
                    Some(mut f) => {
                        if f.last() == Some(&b'\r') {
                            f.truncate(f.len() - 1);
                        }
                        if f.len() > self.max {
                            return Err(());
                        }
                        return Ok(Some(f.to_vec()));
                    }
                }
            }
        }
    }

    /// Every frame or error `next` yields for `chunks`, then at EOF; an
    /// error is recorded and decoding goes on, as the old codec allowed.
    fn outcomes(
        chunks: &[&[u8]],
        mut next: impl FnMut(&mut BytesMut, bool) -> Result<Option<Vec<u8>>, ()>,
    ) -> Vec<Result<Vec<u8>, ()>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            buf.extend_from_slice(c);
            let eof = i + 1 == chunks.len();
            for _ in 0..1000 {
                match next(&mut buf, eof) {
                    Ok(Some(f)) => out.push(Ok(f)),
                    Ok(None) => break,
                    Err(()) => out.push(Err(())),
                }
            }
        }
        out
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
            let chunks = cut(&stream, &cuts);
            let mut c = FrameCodec::new(64);
            prop_assert_eq!(decode_all(&mut c, &chunks).unwrap(), expected);
        }

        /// The same frames and errors as the codec it replaced, on any
        /// bytes cut into any reads, terminators and CRs made common.
        #[test]
        fn agrees_with_the_old_codec(
            data in proptest::collection::vec(prop_oneof![any::<u8>(), Just(0u8), Just(b'\n'), Just(b'\r'), Just(b'a')], 0..300),
            cuts in proptest::collection::vec(1usize..40, 1..30),
            max in 1usize..40,
        ) {
            let mut chunks = cut(&data, &cuts);
            if chunks.is_empty() {
                chunks.push(&[][..]);
            }
            let mut ours = FrameCodec::new(max);
            let mut old = Reference::new(max);
            let got = outcomes(&chunks, |buf, eof| {
                let r = if eof { ours.decode_eof(buf) } else { ours.decode(buf) };
                r.map(|f| f.map(|f| f.to_vec())).map_err(|_| ())
            });
            let want = outcomes(&chunks, |buf, eof| old.next(buf, eof));
            prop_assert_eq!(got, want);
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
