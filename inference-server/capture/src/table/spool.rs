//! The on-disk spool: a capped write-ahead log of inference-table rows waiting for the table.
//!
//! Rows are appended as checksummed binary frames ([`frame`]) to an *open* segment
//! (`<seq>.open`); a segment is *sealed* (`<seq>.rows`) when it reaches the rotation size or age, and the uploader turns each sealed
//! segment into Parquet files, writes them, and only then deletes the segment. A sidecar that
//! is killed and restarted seals what it finds open and uploads everything left, under the
//! same file names (the spool's folder name is its stable instance id, see [`instances`]), so
//! a segment written twice replaces its first copy instead of duplicating rows.
//!
//! The spool never grows past its cap: when a new batch would not fit, the oldest sealed
//! segments not being uploaded are deleted and their rows counted as dropped; when nothing can
//! be deleted, the new batch is refused and counted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub mod frame;
pub mod instances;

pub use instances::{InstanceFolder, SpoolRoot};

use super::record::PayloadRecord;

const OPEN_EXT: &str = "open";
const SEALED_EXT: &str = "rows";
/// Sealed segments of versions that spooled JSON lines; read as they are (see [`frame::Format`]).
const LEGACY_SEALED_EXT: &str = "jsonl";
/// The number the next segment gets at least, kept when the spool runs empty: segment numbers
/// never repeat within an instance (they name its part files and its Delta transactions).
const NEXT_SEQ_FILE: &str = "next-seq";

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation on the spool failed.
    #[error("spool {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A sealed segment, ready to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Position in the log; names the segment's table files.
    pub seq: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Rows in it.
    pub records: u64,
    /// Timestamp of its first row (for lag), in ms since the epoch.
    pub first_timestamp_ms: i64,
}

#[derive(Debug)]
struct OpenSegment {
    seq: u64,
    writer: BufWriter<File>,
    bytes: u64,
    records: u64,
    first_timestamp_ms: i64,
    opened: Instant,
    /// The rows as written, kept while the cache budget allows, so that the uploader need
    /// not parse them back.
    cache: Option<Vec<PayloadRecord>>,
}

#[derive(Debug)]
struct Sealed {
    segment: Segment,
    claimed: bool,
    cache: Option<Vec<PayloadRecord>>,
}

#[derive(Debug, Default)]
struct State {
    open: Option<OpenSegment>,
    sealed: VecDeque<Sealed>,
    next_seq: u64,
}

/// What one [`Spool::append`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Rows written.
    pub written: u64,
    /// Rows of older segments deleted to make room.
    pub evicted: u64,
    /// Rows of this batch refused because nothing could be deleted.
    pub refused: u64,
}

/// What [`Spool::append_without_evicting`] did.
#[derive(Debug)]
pub enum Appended {
    /// The rows are spooled.
    Done(AppendOutcome),
    /// They do not fit: here they are back, nothing was written.
    NoRoom(Vec<PayloadRecord>),
}

/// Totals for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes on disk, open segment included.
    pub bytes: u64,
    /// Rows waiting, open segment included.
    pub records: u64,
    /// Timestamp of the oldest waiting row, if any.
    pub oldest_timestamp_ms: Option<i64>,
}

/// The spool of one instance folder. Shared by the thread that appends and the task that
/// uploads; it holds the folder's lock while it lives.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    cache_bytes: u64,
    folder: InstanceFolder,
    state: Mutex<State>,
}

impl Spool {
    /// Opens the spool in `folder`, holding at most `max_bytes` on disk and keeping up to
    /// `cache_bytes` of recent rows in memory as well (so the uploader reads them without
    /// parsing); seals any segment left open by a previous run so that it is uploaded.
    /// Returns the spool and the rows it found waiting.
    pub fn open(
        folder: InstanceFolder,
        max_bytes: u64,
        cache_bytes: u64,
    ) -> Result<(Self, u64), SpoolError> {
        let dir = folder.path();
        // Listed whole before anything is renamed: a name made during the listing may be
        // listed too, and the segment would then be replayed twice.
        let paths = fs::read_dir(dir)
            .map_err(io("listing", dir))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("listing", dir))?;
        let mut found = Vec::new();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str());
            let seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            match (seq, ext) {
                (Some(seq), Some(OPEN_EXT)) => {
                    let sealed = segment_path(dir, seq, SEALED_EXT);
                    fs::rename(&path, &sealed).map_err(io("sealing", &path))?;
                    found.push((seq, sealed));
                }
                (Some(seq), Some(LEGACY_SEALED_EXT)) => {
                    let sealed = segment_path(dir, seq, SEALED_EXT);
                    fs::rename(&path, &sealed).map_err(io("renaming", &path))?;
                    found.push((seq, sealed));
                }
                (Some(seq), Some(SEALED_EXT)) => found.push((seq, path)),
                _ => {}
            }
        }
        found.sort();
        found.dedup_by_key(|(seq, _)| *seq);
        let mut state = State {
            next_seq: dir_next_seq(dir),
            ..State::default()
        };
        let mut waiting = 0;
        for (seq, path) in found {
            let (records, first_timestamp_ms) = scan(&path)?;
            let bytes = fs::metadata(&path).map_err(io("reading", &path))?.len();
            if records == 0 {
                fs::remove_file(&path).map_err(io("removing", &path))?;
                continue;
            }
            waiting += records;
            state.next_seq = state.next_seq.max(seq + 1);
            state.sealed.push_back(Sealed {
                segment: Segment {
                    seq,
                    bytes,
                    records,
                    first_timestamp_ms,
                },
                claimed: false,
                cache: None,
            });
        }
        let spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            cache_bytes,
            folder,
            state: Mutex::new(state),
        };
        Ok((spool, waiting))
    }

    /// The stable id of this spool (and so of the sidecar that wrote it), used in file names.
    pub fn instance(&self) -> &str {
        self.folder.id()
    }

    /// Removes the spool's folder when it holds no segment any more (an adopted spool, fully
    /// written). Returns whether it did; the spool must not be used afterwards.
    pub fn retire(&self) -> Result<bool, SpoolError> {
        let state = self.lock();
        if state.open.is_some() || !state.sealed.is_empty() {
            return Ok(false);
        }
        self.folder.remove()?;
        Ok(true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `records` to the open segment (opening one if needed), deleting the oldest
    /// unclaimed sealed segments when the cap would be passed (`drop-oldest`).
    pub fn append(&self, records: Vec<PayloadRecord>) -> Result<AppendOutcome, SpoolError> {
        match self.append_within(records, true)? {
            Appended::Done(outcome) => Ok(outcome),
            // Only the non-evicting append hands rows back.
            Appended::NoRoom(records) => Ok(AppendOutcome {
                refused: records.len() as u64,
                ..AppendOutcome::default()
            }),
        }
    }

    /// Appends `records` only if they fit under the cap without deleting anything (`block`);
    /// otherwise hands them back. An empty spool takes any batch, so a batch larger than the
    /// cap cannot wait forever.
    pub fn append_without_evicting(
        &self,
        records: Vec<PayloadRecord>,
    ) -> Result<Appended, SpoolError> {
        self.append_within(records, false)
    }

    fn append_within(
        &self,
        records: Vec<PayloadRecord>,
        evict: bool,
    ) -> Result<Appended, SpoolError> {
        let mut outcome = AppendOutcome::default();
        if records.is_empty() {
            return Ok(Appended::Done(outcome));
        }
        let mut frames = Vec::new();
        for record in &records {
            frame::encode(record, &mut frames);
        }
        let size = frames.len() as u64;
        let mut state = self.lock();
        if !evict {
            let total = total_bytes(&state);
            if total > 0 && total + size > self.max_bytes {
                return Ok(Appended::NoRoom(records));
            }
        }
        while evict && total_bytes(&state) + size > self.max_bytes {
            let Some(position) = state.sealed.iter().position(|s| !s.claimed) else {
                break;
            };
            if let Some(victim) = state.sealed.remove(position) {
                let path = segment_path(&self.dir, victim.segment.seq, SEALED_EXT);
                fs::remove_file(&path).map_err(io("evicting", &path))?;
                tracing::warn!(
                    seq = victim.segment.seq,
                    records = victim.segment.records,
                    "spool full: dropped its oldest segment"
                );
                outcome.evicted += victim.segment.records;
            }
        }
        // (Without evicting, an empty spool takes the batch even past the cap.)
        if evict && total_bytes(&state) + size > self.max_bytes {
            outcome.refused = records.len() as u64;
            return Ok(Appended::Done(outcome));
        }
        if state.open.is_none() {
            let seq = state.next_seq;
            state.next_seq += 1;
            let path = segment_path(&self.dir, seq, OPEN_EXT);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io("creating", &path))?;
            let mut writer = BufWriter::new(file);
            writer
                .write_all(frame::MAGIC)
                .map_err(io("writing", &path))?;
            state.open = Some(OpenSegment {
                seq,
                writer,
                bytes: frame::MAGIC.len() as u64,
                records: 0,
                first_timestamp_ms: records[0].timestamp_ms,
                opened: Instant::now(),
                cache: Some(Vec::new()),
            });
        }
        let cached_sealed: u64 = state
            .sealed
            .iter()
            .filter(|s| s.cache.is_some())
            .map(|s| s.segment.bytes)
            .sum();
        if let Some(open) = state.open.as_mut() {
            let path = segment_path(&self.dir, open.seq, OPEN_EXT);
            open.writer
                .write_all(&frames)
                .and_then(|()| open.writer.flush())
                .map_err(io("appending to", &path))?;
            open.bytes += size;
            open.records += records.len() as u64;
            outcome.written = records.len() as u64;
            if cached_sealed + open.bytes > self.cache_bytes {
                open.cache = None;
            } else if let Some(cache) = open.cache.as_mut() {
                cache.extend(records);
            }
        }
        Ok(Appended::Done(outcome))
    }

    /// Seals the open segment when it holds at least `max_bytes` or is older than `max_age`
    /// (or always, with `force`). Returns whether a segment was sealed.
    pub fn seal_if_due(
        &self,
        max_bytes: u64,
        max_age: Duration,
        force: bool,
    ) -> Result<bool, SpoolError> {
        let mut state = self.lock();
        let due = state.open.as_ref().is_some_and(|open| {
            force || open.bytes >= max_bytes || open.opened.elapsed() >= max_age
        });
        if !due {
            return Ok(false);
        }
        let Some(mut open) = state.open.take() else {
            return Ok(false);
        };
        let from = segment_path(&self.dir, open.seq, OPEN_EXT);
        open.writer.flush().map_err(io("flushing", &from))?;
        open.writer
            .get_ref()
            .sync_data()
            .map_err(io("syncing", &from))?;
        let to = segment_path(&self.dir, open.seq, SEALED_EXT);
        fs::rename(&from, &to).map_err(io("sealing", &from))?;
        state.sealed.push_back(Sealed {
            segment: Segment {
                seq: open.seq,
                bytes: open.bytes,
                records: open.records,
                first_timestamp_ms: open.first_timestamp_ms,
            },
            claimed: false,
            cache: open.cache,
        });
        Ok(true)
    }

    /// Claims the oldest sealed segment for upload; nobody evicts it until
    /// [`Spool::complete`] or [`Spool::release`].
    pub fn claim(&self) -> Option<Segment> {
        let mut state = self.lock();
        let sealed = state.sealed.iter_mut().find(|s| !s.claimed)?;
        sealed.claimed = true;
        Some(sealed.segment.clone())
    }

    /// Reads a claimed segment's rows. A line that does not parse (the tail of a segment cut
    /// by a crash) is skipped and counted in the second value.
    pub fn read(&self, segment: &Segment) -> Result<(Vec<PayloadRecord>, u64), SpoolError> {
        let cached = self
            .lock()
            .sealed
            .iter_mut()
            .find(|s| s.segment.seq == segment.seq)
            .and_then(|s| s.cache.take());
        if let Some(records) = cached {
            return Ok((records, 0));
        }
        let path = segment_path(&self.dir, segment.seq, SEALED_EXT);
        let bytes = fs::read(&path).map_err(io("reading", &path))?;
        Ok(parse(&bytes))
    }

    /// Deletes an uploaded segment.
    pub fn complete(&self, seq: u64) -> Result<(), SpoolError> {
        let mut state = self.lock();
        state.sealed.retain(|s| s.segment.seq != seq);
        // Remember the numbering before the segment's file goes: a restart on an empty spool
        // must not number segments from 0 again (that would overwrite written part files and
        // look like already committed Delta transactions).
        let next = state.next_seq.max(seq + 1);
        let temp = self.dir.join(format!("{NEXT_SEQ_FILE}.tmp"));
        fs::write(&temp, next.to_string()).map_err(io("writing", &temp))?;
        fs::rename(&temp, self.dir.join(NEXT_SEQ_FILE)).map_err(io("writing", &temp))?;
        let path = segment_path(&self.dir, seq, SEALED_EXT);
        fs::remove_file(&path).map_err(io("removing", &path))
    }

    /// Gives a claimed segment back after a failed upload; it is retried first.
    pub fn release(&self, seq: u64) {
        let mut state = self.lock();
        if let Some(sealed) = state.sealed.iter_mut().find(|s| s.segment.seq == seq) {
            sealed.claimed = false;
        }
    }

    /// Bytes, rows and the oldest row waiting.
    pub fn stats(&self) -> SpoolStats {
        let state = self.lock();
        let mut stats = SpoolStats {
            bytes: total_bytes(&state),
            ..SpoolStats::default()
        };
        for sealed in &state.sealed {
            stats.records += sealed.segment.records;
        }
        if let Some(open) = &state.open {
            stats.records += open.records;
        }
        stats.oldest_timestamp_ms = state
            .sealed
            .front()
            .map(|s| s.segment.first_timestamp_ms)
            .or(state.open.as_ref().map(|o| o.first_timestamp_ms));
        stats
    }

    /// Whether any sealed segment waits for upload.
    pub fn has_sealed(&self) -> bool {
        self.lock().sealed.iter().any(|s| !s.claimed)
    }
}

fn total_bytes(state: &State) -> u64 {
    state.sealed.iter().map(|s| s.segment.bytes).sum::<u64>()
        + state.open.as_ref().map_or(0, |o| o.bytes)
}

fn segment_path(dir: &Path, seq: u64, ext: &str) -> PathBuf {
    dir.join(format!("{seq:020}.{ext}"))
}

/// Counts the rows of a segment found at startup and reads its first timestamp.
fn scan(path: &Path) -> Result<(u64, i64), SpoolError> {
    let bytes = fs::read(path).map_err(io("reading", path))?;
    let (records, _) = parse(&bytes);
    let first = records.first().map_or(0, |r| r.timestamp_ms);
    Ok((records.len() as u64, first))
}

/// The rows of a segment's content in either format, and how many could not be read (the tail
/// of a segment cut by a crash).
fn parse(bytes: &[u8]) -> (Vec<PayloadRecord>, u64) {
    match frame::Format::of(bytes) {
        frame::Format::Frames => frame::decode_all(&bytes[frame::MAGIC.len()..]),
        frame::Format::JsonLines => {
            let mut records = Vec::new();
            let mut corrupt = 0;
            for line in bytes.lines() {
                match line {
                    Ok(line) if line.is_empty() => {}
                    Ok(line) => match serde_json::from_str(&line) {
                        Ok(record) => records.push(record),
                        Err(_) => corrupt += 1,
                    },
                    Err(_) => corrupt += 1,
                }
            }
            (records, corrupt)
        }
    }
}

fn dir_next_seq(dir: &Path) -> u64 {
    fs::read_to_string(dir.join(NEXT_SEQ_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-spool-{label}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// The spool of `dir` as a sidecar opens it: its own folder under the root.
    fn open(dir: &Path, max_bytes: u64, cache_bytes: u64) -> (Spool, u64) {
        let folder = SpoolRoot::open(dir).unwrap().take_own().unwrap();
        Spool::open(folder, max_bytes, cache_bytes).unwrap()
    }

    fn rows(n: usize, size: usize) -> Vec<PayloadRecord> {
        (0..n)
            .map(|i| PayloadRecord {
                request_id: format!("r{i}"),
                timestamp_ms: 1000 + i as i64,
                request: Some("x".repeat(size)),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn numbering_survives_an_emptied_spool() {
        let dir = temp("numbering");
        let (spool, _) = open(&dir, 1 << 20, 1 << 20);
        spool.append(rows(2, 10)).unwrap();
        spool.seal_if_due(1 << 20, Duration::MAX, true).unwrap();
        let first = spool.claim().unwrap();
        spool.complete(first.seq).unwrap();
        drop(spool);
        let (spool, waiting) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(waiting, 0);
        spool.append(rows(1, 10)).unwrap();
        spool.seal_if_due(1 << 20, Duration::MAX, true).unwrap();
        assert!(
            spool.claim().unwrap().seq > first.seq,
            "never numbered again"
        );
    }

    #[test]
    fn segments_survive_a_restart_and_keep_the_instance() {
        let dir = temp("restart");
        let (spool, waiting) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(waiting, 0);
        let instance = spool.instance().to_string();
        spool.append(rows(3, 10)).unwrap();
        spool.seal_if_due(1 << 20, Duration::MAX, true).unwrap();
        spool.append(rows(2, 10)).unwrap();
        drop(spool);
        let (spool, waiting) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(waiting, 5);
        assert_eq!(spool.instance(), instance);
        let first = spool.claim().unwrap();
        assert_eq!(
            spool.read(&first).unwrap().0.len(),
            3,
            "read back from disk"
        );
        spool.complete(first.seq).unwrap();
        let second = spool.claim().unwrap();
        assert!(second.seq > first.seq);
        assert_eq!(spool.read(&second).unwrap().0.len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_unclaimed_segment() {
        let dir = temp("cap");
        let (spool, _) = open(&dir, 3000, 0);
        for _ in 0..3 {
            spool.append(rows(1, 800)).unwrap();
            spool.seal_if_due(0, Duration::MAX, true).unwrap();
        }
        let claimed = spool.claim().unwrap();
        let outcome = spool.append(rows(1, 800)).unwrap();
        assert_eq!(outcome.written, 1);
        assert_eq!(
            outcome.evicted, 1,
            "the second segment goes, not the claimed first"
        );
        assert!(spool.stats().bytes <= 3000);
        spool.release(claimed.seq);
        assert_eq!(spool.claim().unwrap().seq, claimed.seq);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_blocking_spool_hands_back_what_does_not_fit_and_drops_nothing() {
        let dir = temp("block");
        let (spool, _) = open(&dir, 3000, 0);
        for _ in 0..3 {
            assert!(matches!(
                spool.append_without_evicting(rows(1, 800)).unwrap(),
                Appended::Done(outcome) if outcome.written == 1
            ));
            spool.seal_if_due(0, Duration::MAX, true).unwrap();
        }
        let Appended::NoRoom(back) = spool.append_without_evicting(rows(1, 800)).unwrap() else {
            panic!("the spool is full");
        };
        assert_eq!(back, rows(1, 800), "handed back whole");
        assert_eq!(spool.stats().records, 3, "nothing evicted");
        let first = spool.claim().unwrap();
        spool.complete(first.seq).unwrap();
        assert!(matches!(
            spool.append_without_evicting(back).unwrap(),
            Appended::Done(_)
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn recent_rows_are_read_from_memory_within_the_cache_budget() {
        let dir = temp("cache");
        let (spool, _) = open(&dir, 1 << 20, 1500);
        spool.append(rows(1, 800)).unwrap();
        spool.seal_if_due(0, Duration::MAX, true).unwrap();
        spool.append(rows(1, 800)).unwrap();
        spool.seal_if_due(0, Duration::MAX, true).unwrap();
        let first = spool.claim().unwrap();
        let second = spool.claim().unwrap();
        // Remove the files: only a cached segment can still be read.
        for seq in [first.seq, second.seq] {
            fs::remove_file(segment_path(&spool.dir, seq, SEALED_EXT)).unwrap();
        }
        assert_eq!(spool.read(&first).unwrap().0.len(), 1, "cached");
        assert!(spool.read(&second).is_err(), "past the budget: not cached");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_frame_is_skipped_and_counted() {
        let dir = temp("torn");
        let (spool, _) = open(&dir, 1 << 20, 1 << 20);
        spool.append(rows(2, 10)).unwrap();
        let open_path = segment_path(&spool.dir, 0, OPEN_EXT);
        drop(spool);
        let mut frames = Vec::new();
        frame::encode(&rows(1, 10)[0], &mut frames);
        let mut file = OpenOptions::new().append(true).open(&open_path).unwrap();
        file.write_all(&frames[..frames.len() - 4]).unwrap();
        let (spool, _) = open(&dir, 1 << 20, 1 << 20);
        let segment = spool.claim().unwrap();
        let (records, corrupt) = spool.read(&segment).unwrap();
        assert_eq!((records.len(), corrupt), (2, 1));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_segments_left_open_or_sealed_are_each_replayed_once() {
        let dir = temp("replay-once");
        let (spool, _) = open(&dir, 1 << 20, 1 << 20);
        for _ in 0..40 {
            spool.append(rows(1, 10)).unwrap();
            spool.seal_if_due(0, Duration::MAX, true).unwrap();
        }
        spool.append(rows(1, 10)).unwrap();
        let folder = spool.dir.clone();
        drop(spool);
        // What a killed sidecar leaves: sealed segments, and open ones (renamed at the next
        // start while the folder is being read).
        for seq in (0..40).step_by(2) {
            fs::rename(
                segment_path(&folder, seq, SEALED_EXT),
                segment_path(&folder, seq, OPEN_EXT),
            )
            .unwrap();
        }
        let (spool, waiting) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(waiting, 41);
        let mut seqs = Vec::new();
        while let Some(segment) = spool.claim() {
            seqs.push(segment.seq);
        }
        assert_eq!(seqs, (0..41).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_lines_of_an_older_version_are_still_read() {
        let dir = temp("legacy");
        let (spool, _) = open(&dir, 1 << 20, 1 << 20);
        let folder = spool.dir.clone();
        drop(spool);
        let mut lines = Vec::new();
        for record in rows(2, 10) {
            serde_json::to_writer(&mut lines, &record).unwrap();
            lines.push(b'\n');
        }
        fs::write(
            folder.join(format!("{:020}.{LEGACY_SEALED_EXT}", 3)),
            &lines,
        )
        .unwrap();
        fs::write(folder.join(format!("{:020}.{OPEN_EXT}", 4)), &lines).unwrap();
        let (spool, waiting) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(waiting, 4);
        for _ in 0..2 {
            let segment = spool.claim().unwrap();
            assert_eq!(spool.read(&segment).unwrap(), (rows(2, 10), 0));
            spool.complete(segment.seq).unwrap();
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_orphaned_spool_is_adopted_under_its_own_id_and_retired_once_written() {
        let dir = temp("adopt");
        let (gone, _) = open(&dir, 1 << 20, 1 << 20);
        let gone_id = gone.instance().to_string();
        gone.append(rows(3, 10)).unwrap();
        let (alive, _) = open(&dir, 1 << 20, 1 << 20);
        let root = SpoolRoot::open(&dir).unwrap();
        assert!(root.orphans().unwrap().is_empty(), "both sidecars live");
        drop(gone);
        let mut orphans = root.orphans().unwrap();
        assert_eq!(orphans.len(), 1);
        let (adopted, waiting) = Spool::open(orphans.remove(0), u64::MAX, 0).unwrap();
        assert_eq!((adopted.instance(), waiting), (gone_id.as_str(), 3));
        assert!(!adopted.retire().unwrap(), "rows still wait");
        let segment = adopted.claim().unwrap();
        assert_eq!(adopted.read(&segment).unwrap().0.len(), 3);
        adopted.complete(segment.seq).unwrap();
        assert!(adopted.retire().unwrap());
        assert!(!dir.join(&gone_id).exists(), "the folder is gone");
        assert!(dir.join(alive.instance()).exists(), "the live one stays");
        let _ = fs::remove_dir_all(&dir);
    }
}
