//! Server-sent events read as the bytes arrive: the data of each event once its blank line
//! has come, whatever the reads split (lines, `\r\n`, UTF-8 characters).

/// Collects lines into events.
#[derive(Debug, Default)]
pub struct EventReader {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl EventReader {
    /// The data of every event `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line_ended(&line) {
                events.push(event);
            }
        }
        events
    }

    /// The event left open when the stream ended, if any.
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            let _ = self.line_ended(&line);
        }
        self.data.take()
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let line = String::from_utf8_lossy(line);
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match self.data.as_mut() {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        // `event:`, `id:`, `retry:` and comments: the data names its own type.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_whatever_the_split() {
        let text =
            "event: a\r\ndata: {\"x\":\"é\"}\r\n\r\n: comment\ndata: 1\ndata: 2\n\ndata: tail";
        for step in 1..=text.len() {
            let mut reader = EventReader::default();
            let mut events = Vec::new();
            for piece in text.as_bytes().chunks(step) {
                events.extend(reader.push(piece));
            }
            events.extend(reader.finish());
            assert_eq!(
                events,
                ["{\"x\":\"é\"}", "1\n2", "tail"],
                "split every {step}"
            );
        }
    }
}
