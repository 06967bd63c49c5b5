//! The spool's record format: each row as one length-prefixed, checksummed binary frame.
//!
//! A segment file starts with [`MAGIC`]; then frames follow, each
//! `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`. The body holds the fields of a
//! [`PayloadRecord`] in declaration order: integers little-endian, strings as a `u32` length
//! and UTF-8 bytes, an option as a `0`/`1` byte before its value, a map or list as a `u32`
//! count before its entries. Nothing is escaped or named, so writing a row costs about a copy
//! of its bytes (JSON lines cost several times that: escaping every body, naming every field).
//!
//! A frame cut short (a crash in the middle of a write) or whose checksum does not match is
//! lost and counted: a damaged frame is skipped by its length, a frame cut short ends the
//! file. Segments of older versions, JSON lines without the magic, are still read (see [`Format::of`]).
//! A feedback record ends with its feedback (a `1` byte, then its fields); other records end
//! after their usage, as frames written before feedback existed do.

use std::collections::BTreeMap;

use crate::table::record::PayloadRecord;
use crate::table::usage::UsageFacts;

/// The first bytes of a segment in this format.
pub const MAGIC: &[u8; 8] = b"SLROWS1\n";

/// Why a frame could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end in the middle of a frame.
    #[error("the frame is cut short")]
    Short,
    /// The body's checksum does not match.
    #[error("the frame's checksum does not match")]
    Checksum,
    /// A field is not what the format allows (bad UTF-8, an option tag other than 0 or 1).
    #[error("the frame's {0} is malformed")]
    Malformed(&'static str),
}

/// How a segment file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Frames after [`MAGIC`].
    Frames,
    /// One JSON object per line (segments written before the frame format).
    JsonLines,
}

impl Format {
    /// The format of a segment whose content starts with `head`.
    pub fn of(head: &[u8]) -> Self {
        if head.starts_with(MAGIC) {
            Self::Frames
        } else {
            Self::JsonLines
        }
    }
}

/// Appends `record` to `out` as one frame.
pub fn encode(record: &PayloadRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let mut w = Writer(out);
    w.str(&record.request_id);
    w.opt_str(record.client_request_id.as_deref());
    w.i64(record.timestamp_ms);
    w.i64(i64::from(record.status_code));
    w.i64(record.execution_time_ms);
    w.opt_str(record.request.as_deref());
    w.opt_str(record.response.as_deref());
    w.map(&record.request_metadata);
    w.str(&record.endpoint);
    w.str(&record.served_entity);
    w.str(&record.model);
    w.str(&record.model_version);
    w.opt_str(record.requester.as_deref());
    w.opt_i64(record.input_token_count);
    w.opt_i64(record.output_token_count);
    w.f64(record.sampling_fraction);
    w.len(record.logging_error_codes.len());
    for code in &record.logging_error_codes {
        w.str(code);
    }
    w.bool(record.usage_only);
    match &record.usage {
        None => w.bool(false),
        Some(usage) => {
            w.bool(true);
            w.map(&usage.usage_context);
            w.opt_f64(usage.cost);
            w.opt_str(usage.currency.as_deref());
        }
    }
    if let Some(feedback) = &record.feedback {
        w.bool(true);
        w.str(&feedback.request_id);
        w.opt_str(feedback.label.as_deref());
        w.opt_f64(feedback.rating);
        w.opt_str(feedback.comment.as_deref());
    }
    let body = &out[start + 8..];
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let checksum = crc32fast::hash(body).to_le_bytes();
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + 8].copy_from_slice(&checksum);
}

/// Reads the frame at the start of `bytes`: the record and the bytes it took.
pub fn decode(bytes: &[u8]) -> Result<(PayloadRecord, usize), FrameError> {
    let header = bytes.get(..8).ok_or(FrameError::Short)?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let body = bytes.get(8..8 + length).ok_or(FrameError::Short)?;
    if crc32fast::hash(body) != checksum {
        return Err(FrameError::Checksum);
    }
    let mut r = Reader(body);
    let record = PayloadRecord {
        request_id: r.string()?,
        client_request_id: r.opt_string()?,
        timestamp_ms: r.i64()?,
        status_code: i32::try_from(r.i64()?).map_err(|_| FrameError::Malformed("status"))?,
        execution_time_ms: r.i64()?,
        request: r.opt_string()?,
        response: r.opt_string()?,
        request_metadata: r.map()?,
        endpoint: r.string()?,
        served_entity: r.string()?,
        model: r.string()?,
        model_version: r.string()?,
        requester: r.opt_string()?,
        input_token_count: r.opt_i64()?,
        output_token_count: r.opt_i64()?,
        sampling_fraction: r.f64()?,
        logging_error_codes: (0..r.len()?)
            .map(|_| r.string())
            .collect::<Result<_, _>>()?,
        usage_only: r.bool()?,
        usage: if r.bool()? {
            Some(UsageFacts {
                usage_context: r.map()?,
                cost: r.opt_f64()?,
                currency: r.opt_string()?,
            })
        } else {
            None
        },
        feedback: if !r.0.is_empty() && r.bool()? {
            Some(sluice_contract::feedback::Feedback {
                request_id: r.string()?,
                label: r.opt_string()?,
                rating: r.opt_f64()?,
                comment: r.opt_string()?,
            })
        } else {
            None
        },
    };
    if !r.0.is_empty() {
        return Err(FrameError::Malformed("length"));
    }
    Ok((record, 8 + length))
}

/// Reads every frame of a segment's content after its magic: the records, and how many frames
/// were lost. A damaged frame whose length is intact is skipped (one lost); a frame cut short
/// ends the segment (one lost: the write a crash interrupted).
pub fn decode_all(mut bytes: &[u8]) -> (Vec<PayloadRecord>, u64) {
    let mut records = Vec::new();
    let mut lost = 0;
    while !bytes.is_empty() {
        match decode(bytes) {
            Ok((record, taken)) => {
                records.push(record);
                bytes = &bytes[taken..];
            }
            Err(FrameError::Short) => return (records, lost + 1),
            Err(_) => {
                lost += 1;
                let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                bytes = &bytes[8 + length as usize..];
            }
        }
    }
    (records, lost)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn bool(&mut self, value: bool) {
        self.0.push(u8::from(value));
    }

    fn len(&mut self, n: usize) {
        self.0
            .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn f64(&mut self, value: f64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn str(&mut self, text: &str) {
        self.len(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn opt_str(&mut self, text: Option<&str>) {
        self.bool(text.is_some());
        if let Some(text) = text {
            self.str(text);
        }
    }

    fn opt_i64(&mut self, value: Option<i64>) {
        self.bool(value.is_some());
        if let Some(value) = value {
            self.i64(value);
        }
    }

    fn opt_f64(&mut self, value: Option<f64>) {
        self.bool(value.is_some());
        if let Some(value) = value {
            self.f64(value);
        }
    }

    fn map(&mut self, map: &BTreeMap<String, String>) {
        self.len(map.len());
        for (key, value) in map {
            self.str(key);
            self.str(value);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(FrameError::Malformed(what))?;
        self.0 = rest;
        Ok(*head)
    }

    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.take::<1>("option tag")? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(FrameError::Malformed("option tag")),
        }
    }

    fn len(&mut self) -> Result<usize, FrameError> {
        Ok(u32::from_le_bytes(self.take("length")?) as usize)
    }

    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.take("integer")?))
    }

    fn f64(&mut self) -> Result<f64, FrameError> {
        Ok(f64::from_le_bytes(self.take("number")?))
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let n = self.len()?;
        if n > self.0.len() {
            return Err(FrameError::Malformed("string length"));
        }
        let (text, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| FrameError::Malformed("UTF-8"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, FrameError> {
        self.bool()?.then(|| self.string()).transpose()
    }

    fn opt_i64(&mut self) -> Result<Option<i64>, FrameError> {
        self.bool()?.then(|| self.i64()).transpose()
    }

    fn opt_f64(&mut self) -> Result<Option<f64>, FrameError> {
        self.bool()?.then(|| self.f64()).transpose()
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, FrameError> {
        (0..self.len()?)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> PayloadRecord {
        PayloadRecord {
            request_id: "r-1".into(),
            client_request_id: Some("c-1".into()),
            timestamp_ms: 1_764_000_000_123,
            status_code: 200,
            execution_time_ms: 17,
            request: Some("{\"inputs\": [[1, 2]], \"note\": \"é\\n\"}".into()),
            response: None,
            request_metadata: BTreeMap::from([
                ("method".into(), "POST".into()),
                ("path".into(), "/invocations".into()),
            ]),
            endpoint: "fraud".into(),
            served_entity: "fraud-1".into(),
            model: "fraud".into(),
            model_version: "3".into(),
            requester: Some("alice".into()),
            input_token_count: Some(12),
            output_token_count: None,
            sampling_fraction: 0.25,
            logging_error_codes: vec!["REQUEST_PAYLOAD_TRUNCATED".into()],
            usage_only: true,
            usage: Some(UsageFacts {
                usage_context: BTreeMap::from([("team".into(), "risk".into())]),
                cost: Some(0.0125),
                currency: None,
            }),
            feedback: None,
        }
    }

    #[test]
    fn every_field_comes_back() {
        let mut bytes = Vec::new();
        encode(&full(), &mut bytes);
        encode(&PayloadRecord::default(), &mut bytes);
        let (records, lost) = decode_all(&bytes);
        assert_eq!(lost, 0);
        assert_eq!(records, [full(), PayloadRecord::default()]);
    }

    #[test]
    fn a_feedback_comes_back_and_frames_without_one_are_as_before() {
        let mut before = Vec::new();
        encode(&full(), &mut before);
        let feedback = PayloadRecord {
            feedback: Some(sluice_contract::feedback::Feedback {
                request_id: "r-0".into(),
                label: Some("fraud".into()),
                rating: Some(-1.0),
                comment: Some("wrong".into()),
            }),
            ..full()
        };
        let mut bytes = before.clone();
        encode(&feedback, &mut bytes);
        // A frame without feedback is byte for byte what older sidecars wrote.
        assert_eq!(&bytes[..before.len()], &before[..]);
        let (records, lost) = decode_all(&bytes);
        assert_eq!(lost, 0);
        assert_eq!(records, [full(), feedback]);
    }

    #[test]
    fn a_torn_or_damaged_frame_ends_the_segment_counted() {
        let mut bytes = Vec::new();
        encode(&full(), &mut bytes);
        encode(&full(), &mut bytes);
        let (records, lost) = decode_all(&bytes[..bytes.len() - 3]);
        assert_eq!((records.len(), lost), (1, 1), "cut short");
        bytes[20] ^= 0xff;
        assert_eq!(decode(&bytes).unwrap_err(), FrameError::Checksum);
        let (records, lost) = decode_all(&bytes);
        assert_eq!(
            (records.len(), lost),
            (1, 1),
            "the damaged first is skipped"
        );
        assert_eq!(records[0].request_id, "r-1");
    }

    #[test]
    fn the_format_is_told_by_the_magic() {
        assert_eq!(Format::of(b"SLROWS1\n\x10"), Format::Frames);
        assert_eq!(Format::of(b"{\"request_id\""), Format::JsonLines);
        assert_eq!(Format::of(b""), Format::JsonLines);
    }
}
