//! A per-attempt log spool on local disk.
//!
//! Every output chunk is appended here first; a separate task reads batches and ships
//! them to the coordinator, then acknowledges them. So a slow or unreachable coordinator
//! never blocks the child's pipes: output waits on disk instead.
//!
//! The file `<dir>/<attempt_id>.spool` is append-only and holds one frame per chunk: seq
//! (u64), stream (u8: 1 stdout, 2 stderr), time in unix ms (i64), data length (u32), all
//! little-endian, then the data. Seqs run 0, 1, 2, … in file order. The writer publishes
//! how many bytes of complete frames the file holds (a `watch` channel); the reader reads
//! only that far, so it never sees half a frame. Both use positioned I/O on the blocking
//! pool, so a slow disk stalls only the attempt's own tasks, not the runtime.
//!
//! Bound: output written but not yet acknowledged by the coordinator (frame headers
//! included) never exceeds `max_bytes`; that is what a long outage can pile up. Output the
//! coordinator acknowledged is freed from the disk as the reader moves on (the file keeps
//! its offsets, the acknowledged range becomes a hole: `fallocate(PUNCH_HOLE)`), so a job
//! may write far more than `max_bytes` in all while the coordinator keeps up. The chunk
//! that reaches the bound is cut to fit and everything after it is dropped, so what is
//! kept is always a prefix of the output. Dropped output is counted
//! ([`SpoolWriter::dropped_bytes`]), and [`SpoolWriter::finish`] then appends one last
//! stderr chunk beyond the bound: `[drover: spool limit of N bytes reached; M bytes of
//! output were dropped]`.
//!
//! Nothing is recovered after a crash: a restarted worker deletes spools left behind
//! (their attempts are lost anyway).

use crate::process::StreamKind;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// seq u64 + stream u8 + time i64 + len u32.
const HEADER: usize = 8 + 1 + 8 + 4;
/// Read beyond a batch's data budget, for the frame headers.
const READ_SLACK: u64 = 64 * 1024;
/// Acknowledged bytes freed from the disk at a time.
const PUNCH_EVERY: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("log spool {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("log spool {path} is corrupt at offset {offset}: {why}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: &'static str,
    },
    #[error("log spool {0}: chunk of {1} bytes is too large for one frame")]
    ChunkTooLarge(PathBuf, usize),
}

#[derive(Debug, Clone, Copy, Default)]
struct Published {
    /// Bytes of complete frames in the file.
    committed: u64,
    finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledChunk {
    pub seq: u64,
    pub stream: StreamKind,
    pub time_unix_ms: i64,
    pub data: Vec<u8>,
}

/// The spool file, shared by the writer, the blocking-pool jobs that write it and the
/// reader. Created on the first frame: an attempt with no output makes no file (creating
/// and deleting one per attempt was a measurable cost on ext4 with many short jobs).
struct Disk {
    path: PathBuf,
    file: Option<Arc<File>>,
    /// The reader removed the spool: later frames are discarded, the file not recreated.
    removed: bool,
    /// The file was made (on the first frame): a job with no output leaves none to delete.
    created: bool,
    /// The newest write that reached the file. A write whose `append` was abandoned may
    /// still be queued; once a newer one has run it must not, or it would overwrite it.
    epoch: u64,
}

/// Appends chunks; owned by the task that consumes the process's output.
pub struct SpoolWriter {
    path: PathBuf,
    disk: Arc<Mutex<Disk>>,
    epoch: u64,
    next_seq: u64,
    /// Bytes of complete frames; the next frame goes here.
    committed: u64,
    max_bytes: u64,
    dropped: u64,
    /// The reader's acknowledged offset: bytes before it no longer count against the bound.
    acked: Arc<AtomicU64>,
    tx: watch::Sender<Published>,
}

/// Reads what the writer committed; owned by the task that ships the log.
pub struct SpoolReader {
    path: PathBuf,
    disk: Arc<Mutex<Disk>>,
    /// Offset and seq of the first frame not yet acknowledged.
    acked_off: u64,
    acked_seq: u64,
    /// Shared with the writer, for its bound.
    acked: Arc<AtomicU64>,
    /// Bytes before this offset were freed from the disk.
    punched: u64,
    /// (seq, end offset) of each frame handed out and not yet acknowledged.
    handed: Vec<(u64, u64)>,
    rx: watch::Receiver<Published>,
}

/// Creates (or truncates) a spool file, and its directory if that is gone (the worker
/// makes it at start; looking for it at every attempt cost two system calls a job).
fn open_spool(path: &Path) -> std::io::Result<File> {
    // Readable too, for the reader; writable for hole punching.
    let open = || {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        r => r,
    }
}

/// The spool of `<dir>/<attempt_id>.spool`, made (with `dir` if needed) at the first frame.
pub fn create(dir: &Path, attempt_id: &str, max_bytes: u64) -> (SpoolWriter, SpoolReader) {
    let path = dir.join(format!("{attempt_id}.spool"));
    let disk = Arc::new(Mutex::new(Disk {
        path: path.clone(),
        file: None,
        removed: false,
        created: false,
        epoch: 0,
    }));
    let (tx, rx) = watch::channel(Published::default());
    let acked = Arc::new(AtomicU64::new(0));
    (
        SpoolWriter {
            path: path.clone(),
            disk: disk.clone(),
            epoch: 0,
            next_seq: 0,
            committed: 0,
            max_bytes,
            dropped: 0,
            acked: acked.clone(),
            tx,
        },
        SpoolReader {
            path,
            disk,
            acked_off: 0,
            acked_seq: 0,
            acked,
            punched: 0,
            handed: Vec::new(),
            rx,
        },
    )
}

fn stream_byte(s: StreamKind) -> u8 {
    match s {
        StreamKind::Stdout => 1,
        StreamKind::Stderr => 2,
    }
}

fn io_task_failed(path: &Path, e: tokio::task::JoinError) -> SpoolError {
    SpoolError::Io(path.to_path_buf(), std::io::Error::other(e))
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SpoolWriter {
    /// Writes one frame at the committed end and publishes it. Returns its seq.
    async fn frame(
        &mut self,
        stream: StreamKind,
        data: &[u8],
        time_unix_ms: i64,
    ) -> Result<u64, SpoolError> {
        let len = u32::try_from(data.len())
            .map_err(|_| SpoolError::ChunkTooLarge(self.path.clone(), data.len()))?;
        let seq = self.next_seq;
        // Header and data in one buffer: one write per chunk.
        let mut frame = Vec::with_capacity(HEADER + data.len());
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.push(stream_byte(stream));
        frame.extend_from_slice(&time_unix_ms.to_le_bytes());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(data);

        self.epoch += 1;
        let (disk, epoch, off) = (self.disk.clone(), self.epoch, self.committed);
        tokio::task::spawn_blocking(move || {
            let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            if d.epoch > epoch {
                return Ok(());
            }
            d.epoch = epoch;
            if d.removed {
                return Ok(());
            }
            let file = match &d.file {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(open_spool(&d.path)?);
                    d.file = Some(f.clone());
                    d.created = true;
                    f
                }
            };
            // At an explicit offset: a failed or abandoned write leaves nothing to undo,
            // the next frame simply goes to the same place.
            file.write_all_at(&frame, off)
        })
        .await
        .map_err(|e| io_task_failed(&self.path, e))?
        .map_err(|e| SpoolError::Io(self.path.clone(), e))?;

        self.next_seq += 1;
        self.committed = off + frame_len(data.len());
        let committed = self.committed;
        self.tx.send_modify(|p| p.committed = committed);
        Ok(seq)
    }

    /// Appends one chunk of output. Returns its seq, or None if it was dropped because the
    /// spool is full (see the module doc; a chunk that only partly fits is cut and kept).
    pub async fn append(
        &mut self,
        stream: StreamKind,
        data: &[u8],
        time_unix_ms: i64,
    ) -> Result<Option<u64>, SpoolError> {
        let unacked = self
            .committed
            .saturating_sub(self.acked.load(Ordering::Acquire));
        let room = self.max_bytes.saturating_sub(unacked);
        let fits = usize::try_from(room.saturating_sub(HEADER as u64)).unwrap_or(usize::MAX);
        // Once something was dropped, nothing after it is kept: no holes in the log.
        if self.dropped > 0 || room <= HEADER as u64 {
            self.dropped += data.len() as u64;
            return Ok(None);
        }
        let kept = &data[..data.len().min(fits)];
        let seq = self.frame(stream, kept, time_unix_ms).await?;
        self.dropped += (data.len() - kept.len()) as u64;
        Ok(Some(seq))
    }

    /// Bytes of output not kept because of the bound.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// No more output: writes the drop marker if any output was dropped, and lets the
    /// reader see the end. Returns the number of chunks in the spool.
    pub async fn finish(mut self) -> Result<u64, SpoolError> {
        if self.dropped > 0 {
            let marker = format!(
                "\n[drover: spool limit of {} bytes reached; {} bytes of output were dropped]\n",
                self.max_bytes, self.dropped
            );
            // Dropping the writer on error also ends the reader.
            self.frame(StreamKind::Stderr, marker.as_bytes(), now_unix_ms())
                .await?;
        }
        self.tx.send_modify(|p| p.finished = true);
        Ok(self.next_seq)
    }
}

fn frame_len(data_len: usize) -> u64 {
    (HEADER + data_len) as u64
}

/// Reads the frames in `[start, end)` from seq `first_seq` on, up to `max_bytes` of data
/// but at least one frame. Returns each with its end offset.
fn read_frames(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    first_seq: u64,
    max_bytes: usize,
) -> Result<Vec<(SpooledChunk, u64)>, SpoolError> {
    let io = |e| SpoolError::Io(path.to_path_buf(), e);
    let corrupt = |offset, why| SpoolError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why,
    };
    // One read for the whole batch; a first frame larger than that is read on its own.
    let block_len = (end - start).min(max_bytes as u64 + READ_SLACK);
    let mut block = vec![0u8; usize::try_from(block_len).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut block, start).map_err(io)?;

    let mut chunks = Vec::new();
    let (mut pos, mut bytes) = (0usize, 0usize);
    while start + (pos as u64) < end && pos + HEADER <= block.len() {
        let off = start + pos as u64;
        let h = &block[pos..pos + HEADER];
        let field = |r: std::ops::Range<usize>| -> [u8; 8] {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&h[r]);
            b
        };
        let seq = u64::from_le_bytes(field(0..8));
        let stream = match h[8] {
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            _ => return Err(corrupt(off, "unknown stream")),
        };
        let time_unix_ms = i64::from_le_bytes(field(9..17));
        let len = u64::from_le_bytes(field(17..21)) as usize;
        let expected = first_seq + chunks.len() as u64;
        if seq != expected {
            return Err(corrupt(off, "sequence number out of order"));
        }
        let frame_end = off + frame_len(len);
        if frame_end > end {
            return Err(corrupt(off, "frame runs past the written end"));
        }
        if !chunks.is_empty() && bytes + len > max_bytes {
            break;
        }
        let data_at = pos + HEADER;
        let data = if data_at + len <= block.len() {
            block[data_at..data_at + len].to_vec()
        } else if chunks.is_empty() {
            let mut d = vec![0u8; len];
            file.read_exact_at(&mut d, off + HEADER as u64)
                .map_err(io)?;
            d
        } else {
            break;
        };
        pos = data_at + len;
        bytes += len;
        let chunk = SpooledChunk {
            seq,
            stream,
            time_unix_ms,
            data,
        };
        chunks.push((chunk, frame_end));
    }
    Ok(chunks)
}

impl SpoolReader {
    /// Waits until there is an unacknowledged chunk, then returns up to `max_bytes` of
    /// chunk data (at least one chunk) in seq order, starting after the last acknowledged
    /// one. The same chunks come back until acknowledged. Empty once the writer finished
    /// (or was dropped) and everything it wrote was acknowledged.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<SpooledChunk>, SpoolError> {
        self.handed.clear();
        self.next_batch_ahead(max_bytes).await
    }

    /// Like [`next_batch`](Self::next_batch), but starts after the chunks already handed
    /// out and not yet acknowledged, so a sender can read the next batch while the previous
    /// one is still on its way. Acknowledge in order.
    pub async fn next_batch_ahead(
        &mut self,
        max_bytes: usize,
    ) -> Result<Vec<SpooledChunk>, SpoolError> {
        loop {
            let p = *self.rx.borrow_and_update();
            let (from, _) = self.read_from();
            if p.committed > from {
                return self.read_batch(p.committed, max_bytes).await;
            }
            // A dropped writer (its task ended without finish) also means no more chunks.
            if p.finished || self.rx.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn read_batch(
        &mut self,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<SpooledChunk>, SpoolError> {
        let path = self.path.clone();
        let Some(file) = self.file() else {
            // Something was committed, so the file was made; only a removal undoes that.
            return Err(SpoolError::Io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "spool file is gone"),
            ));
        };
        let (start, seq) = self.read_from();
        let frames = tokio::task::spawn_blocking(move || {
            read_frames(&file, &path, start, end, seq, max_bytes)
        })
        .await
        .map_err(|e| io_task_failed(&self.path, e))??;
        self.handed
            .extend(frames.iter().map(|(c, end)| (c.seq, *end)));
        Ok(frames.into_iter().map(|(c, _)| c).collect())
    }

    /// Whether output beyond what was handed out is already written (a read would not wait).
    pub fn has_more(&self) -> bool {
        self.rx.borrow().committed > self.read_from().0
    }

    /// Offset and seq of the first frame not yet handed out.
    fn read_from(&self) -> (u64, u64) {
        match self.handed.last() {
            Some(&(seq, end)) => (end, seq + 1),
            None => (self.acked_off, self.acked_seq),
        }
    }

    /// Acknowledges the handed-out chunks up to and including seq `upto`; they are not
    /// returned again. Seqs not handed out are ignored.
    pub fn ack(&mut self, upto: u64) {
        if let Some(&(seq, end)) = self.handed.iter().rev().find(|(s, _)| *s <= upto) {
            self.handed.retain(|&(s, _)| s > seq);
            if end > self.acked_off {
                self.acked_off = end;
                self.acked_seq = seq + 1;
                self.acked.store(end, Ordering::Release);
                self.free_acknowledged();
            }
        }
    }

    /// Gives the disk space of acknowledged frames back, in steps of PUNCH_EVERY. Where the
    /// filesystem cannot punch holes the file simply keeps its size until it is removed.
    fn free_acknowledged(&mut self) {
        let upto = self.acked_off - self.acked_off % 4096;
        if upto < self.punched + PUNCH_EVERY {
            return;
        }
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let (off, len) = (self.punched as i64, (upto - self.punched) as i64);
        let Some(file) = self.file() else {
            return;
        };
        if let Err(e) = fallocate(&*file, flags, off, len) {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot free spooled output");
        }
        self.punched = upto;
    }

    /// Bytes in the file (frame headers included) not yet acknowledged.
    pub fn unacked_bytes(&self) -> u64 {
        self.rx.borrow().committed.saturating_sub(self.acked_off)
    }

    fn file(&self) -> Option<Arc<File>> {
        self.disk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .file
            .clone()
    }

    /// Deletes the spool file. A writer still running goes on without error, but its
    /// frames are discarded and the file is not made again.
    pub fn remove(self) -> Result<(), SpoolError> {
        let mut d = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        d.removed = true;
        d.file = None;
        if !d.created {
            return Ok(());
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::Io(self.path.clone(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(b: &[SpooledChunk]) -> Vec<u64> {
        b.iter().map(|c| c.seq).collect()
    }

    #[tokio::test]
    async fn round_trip_keeps_bytes_streams_times_and_order() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a1", 1 << 20);
        let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let input: Vec<(StreamKind, Vec<u8>, i64)> = vec![
            (StreamKind::Stdout, b"hello\n".to_vec(), 1_700_000_000_000),
            (StreamKind::Stderr, b"\xff\x00\xfe not utf-8".to_vec(), -5),
            (StreamKind::Stdout, Vec::new(), 7),
            (StreamKind::Stdout, big, i64::MAX),
        ];
        for (i, (s, data, t)) in input.iter().enumerate() {
            assert_eq!(w.append(*s, data, *t).await.unwrap(), Some(i as u64));
        }
        assert_eq!(w.finish().await.unwrap(), 4);
        let b = r.next_batch(1 << 20).await.unwrap();
        let got: Vec<_> = b
            .iter()
            .map(|c| (c.stream, c.data.clone(), c.time_unix_ms))
            .collect();
        assert_eq!(got, input);
        assert_eq!(seqs(&b), vec![0, 1, 2, 3]);
        r.ack(3);
        assert_eq!(r.unacked_bytes(), 0);
        assert!(r.next_batch(1 << 20).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn batch_respects_max_bytes_but_returns_at_least_one_chunk() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a2", 1 << 20);
        for data in [&b"aaaa"[..], b"bbbb", b"cc", b"dddddddddd"] {
            w.append(StreamKind::Stdout, data, 0).await.unwrap();
        }
        // The first chunk alone is over the budget: still returned.
        assert_eq!(seqs(&r.next_batch(1).await.unwrap()), vec![0]);
        assert_eq!(seqs(&r.next_batch(8).await.unwrap()), vec![0, 1]);
        assert_eq!(seqs(&r.next_batch(10).await.unwrap()), vec![0, 1, 2]);
        r.ack(2);
        let b = r.next_batch(3).await.unwrap();
        assert_eq!((b.len(), b[0].data.as_slice()), (1, &b"dddddddddd"[..]));
    }

    #[tokio::test]
    async fn reading_ahead_continues_after_the_unacknowledged_batch() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a9", 1 << 20);
        for i in 0..6u8 {
            w.append(StreamKind::Stdout, &[i; 10], 0).await.unwrap();
        }
        w.finish().await.unwrap();
        let a = r.next_batch(20).await.unwrap();
        assert_eq!(seqs(&a), vec![0, 1]);
        let b = r.next_batch_ahead(20).await.unwrap();
        assert_eq!(seqs(&b), vec![2, 3]);
        r.ack(1);
        assert_eq!(r.unacked_bytes(), 4 * (HEADER as u64 + 10));
        let c = r.next_batch_ahead(20).await.unwrap();
        assert_eq!(seqs(&c), vec![4, 5]);
        r.ack(3);
        r.ack(5);
        assert_eq!(r.unacked_bytes(), 0);
        assert!(r.next_batch_ahead(20).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn batch_comes_back_until_acked() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a3", 1 << 20);
        for i in 0..5u8 {
            w.append(StreamKind::Stdout, &[i; 10], 0).await.unwrap();
        }
        let first = r.next_batch(1 << 20).await.unwrap();
        assert_eq!(r.next_batch(1 << 20).await.unwrap(), first);
        assert_eq!(r.unacked_bytes(), 5 * (HEADER as u64 + 10));
        // Part of a batch.
        r.ack(1);
        assert_eq!(r.unacked_bytes(), 3 * (HEADER as u64 + 10));
        let b = r.next_batch(1 << 20).await.unwrap();
        assert_eq!(seqs(&b), vec![2, 3, 4]);
        assert_eq!(b[0].data, [2u8; 10]);
        // Older or unknown seqs change nothing.
        r.ack(0);
        assert_eq!(seqs(&r.next_batch(1 << 20).await.unwrap()), vec![2, 3, 4]);
        r.ack(99);
        assert_eq!(r.unacked_bytes(), 0);
    }

    #[tokio::test]
    async fn reader_waits_for_the_writer_and_then_sees_the_end() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a4", 1 << 20);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let b = r.next_batch(1 << 20).await.unwrap();
                let Some(last) = b.last().map(|c| c.seq) else {
                    return (got, r);
                };
                got.extend(b.into_iter().map(|c| c.data));
                r.ack(last);
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Nothing written, not finished: the reader can only be waiting.
        assert!(!reader.is_finished());
        w.append(StreamKind::Stdout, b"late", 5).await.unwrap();
        w.append(StreamKind::Stderr, b"later", 6).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 2);
        let (got, r) = reader.await.unwrap();
        assert_eq!(got, vec![b"late".to_vec(), b"later".to_vec()]);
        assert_eq!(r.unacked_bytes(), 0);
    }

    #[tokio::test]
    async fn a_dropped_writer_ends_the_reader_too() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a5", 1 << 20);
        w.append(StreamKind::Stdout, b"x", 0).await.unwrap();
        drop(w);
        assert_eq!(seqs(&r.next_batch(10).await.unwrap()), vec![0]);
        r.ack(0);
        assert!(r.next_batch(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_writer_and_reader_move_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a6", 1 << 30);
        let chunks: Vec<Vec<u8>> = (0..400u32)
            .map(|i| {
                let len = (i as usize * 7919) % (64 * 1024) + 1;
                (0..len).map(|j| (i as usize + j) as u8).collect()
            })
            .collect();
        let expected: Vec<u8> = chunks.concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut next = 0;
            loop {
                let b = r.next_batch(256 * 1024).await.unwrap();
                let Some(last) = b.last().map(|c| c.seq) else {
                    return got;
                };
                for c in b {
                    assert_eq!(c.seq, next);
                    next += 1;
                    got.extend(c.data);
                }
                r.ack(last);
            }
        });
        for c in &chunks {
            w.append(StreamKind::Stdout, c, 0).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), 400);
        let got = reader.await.unwrap();
        assert!(
            got == expected,
            "{} bytes read of {}",
            got.len(),
            expected.len()
        );
    }

    #[tokio::test]
    async fn the_limit_bounds_unsent_output_not_the_total() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        // Forty times the limit in all, shipped as it is written: nothing may be dropped,
        // and the disk holds little more than what is unsent.
        let max = 1 << 20;
        let (mut w, mut r) = create(d.path(), "a8", max);
        let chunk = vec![b'x'; 64 * 1024];
        let mut got = 0usize;
        for _ in 0..640 {
            assert!(w
                .append(StreamKind::Stdout, &chunk, 0)
                .await
                .unwrap()
                .is_some());
            let b = r.next_batch(1 << 20).await.unwrap();
            got += b.iter().map(|c| c.data.len()).sum::<usize>();
            r.ack(b.last().unwrap().seq);
        }
        assert_eq!(w.dropped_bytes(), 0);
        assert_eq!(got, 640 * chunk.len());
        let m = std::fs::metadata(d.path().join("a8.spool")).unwrap();
        assert!(m.len() > 40 * max, "the file keeps its offsets");
        assert!(
            m.blocks() * 512 < 2 * PUNCH_EVERY + max,
            "acknowledged output still takes {} bytes of disk",
            m.blocks() * 512
        );
        // Unsent output is still bounded.
        let big = vec![b'y'; 2 * max as usize];
        w.append(StreamKind::Stdout, &big, 0).await.unwrap();
        assert!(w.dropped_bytes() > 0);
    }

    #[tokio::test]
    async fn limit_keeps_a_prefix_counts_the_rest_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        // Room for one frame of 8 bytes and the first 5 bytes of another.
        let max = 2 * HEADER as u64 + 13;
        let (mut w, mut r) = create(d.path(), "a7", max);
        assert_eq!(
            w.append(StreamKind::Stdout, b"12345678", 0).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            w.append(StreamKind::Stdout, b"abcdefgh", 0).await.unwrap(),
            Some(1)
        );
        assert_eq!(w.dropped_bytes(), 3);
        // Full: even a small chunk now is dropped, so the log has no holes.
        assert_eq!(w.append(StreamKind::Stderr, b"z", 0).await.unwrap(), None);
        assert_eq!(w.dropped_bytes(), 4);
        assert_eq!(
            std::fs::metadata(d.path().join("a7.spool")).unwrap().len(),
            max
        );
        assert_eq!(w.finish().await.unwrap(), 3);
        let b = r.next_batch(1 << 20).await.unwrap();
        assert_eq!(seqs(&b), vec![0, 1, 2]);
        assert_eq!(b[1].data, b"abcde");
        assert_eq!(b[2].stream, StreamKind::Stderr);
        let marker = String::from_utf8_lossy(&b[2].data);
        assert_eq!(
            marker,
            format!(
                "\n[drover: spool limit of {max} bytes reached; 4 bytes of output were dropped]\n"
            )
        );
    }

    #[tokio::test]
    async fn within_the_limit_there_is_no_marker() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a8", HEADER as u64 + 3);
        w.append(StreamKind::Stdout, b"abc", 0).await.unwrap();
        assert_eq!(w.dropped_bytes(), 0);
        assert_eq!(w.finish().await.unwrap(), 1);
        assert_eq!(r.next_batch(1 << 20).await.unwrap().len(), 1);
        r.ack(0);
        assert!(r.next_batch(1 << 20).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn damage_is_reported_not_misread() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(d.path(), "a9", 1 << 20);
        w.append(StreamKind::Stdout, b"one", 0).await.unwrap();
        w.append(StreamKind::Stdout, b"two", 0).await.unwrap();
        // Make the second frame's length point past the end.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("a9.spool"))
            .unwrap();
        f.write_all_at(&u32::MAX.to_le_bytes(), (HEADER + 3 + 17) as u64)
            .unwrap();
        let e = r.next_batch(1 << 20).await.unwrap_err();
        assert!(
            matches!(e, SpoolError::Corrupt { offset, .. } if offset == (HEADER + 3) as u64),
            "{e}"
        );
    }

    #[tokio::test]
    async fn no_output_makes_no_file() {
        let d = tempfile::tempdir().unwrap();
        let (w, mut r) = create(d.path(), "a11", 1 << 20);
        assert_eq!(w.finish().await.unwrap(), 0);
        assert!(r.next_batch(1 << 20).await.unwrap().is_empty());
        assert!(!d.path().join("a11.spool").exists());
        r.remove().unwrap();
    }

    #[tokio::test]
    async fn removed_before_any_output_stays_removed() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = create(d.path(), "a12", 1 << 20);
        r.remove().unwrap();
        w.append(StreamKind::Stdout, b"late", 0).await.unwrap();
        w.finish().await.unwrap();
        assert!(!d.path().join("a12.spool").exists());
    }

    #[tokio::test]
    async fn remove_deletes_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = create(d.path().join("spool").as_path(), "a10", 1 << 20);
        w.append(StreamKind::Stdout, b"x", 0).await.unwrap();
        let path = d.path().join("spool/a10.spool");
        assert!(path.exists());
        r.remove().unwrap();
        assert!(!path.exists());
        // The writer may still be running; it must not fail or bring the file back.
        w.append(StreamKind::Stdout, b"y", 0).await.unwrap();
        w.finish().await.unwrap();
        assert!(!path.exists());
    }
}
