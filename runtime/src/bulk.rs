//! Writing and reading large files past the page cache.
//!
//! A round writes several gigabytes at 10M values: every upload at the coordinator, every
//! member's own contribution, the aggregate it keeps, its partial decryption and its model.
//! Through the page cache each byte lands in a freshly allocated page, and on virtual machines
//! that hand free memory back to their host a fresh page costs a fault in the host too: on the
//! benchmark machine a new 1 GB file took 3.3 to 4.0 s of kernel time to write in 4 MiB calls,
//! and as much to read back once it was no longer cached, against about 0.1 s each with
//! `O_DIRECT` (BENCHMARKS.md, "the page cache"). These files are written once and read a few
//! times at most, so caching them saves little.
//!
//! [`BulkWriter`] gathers whole blocks of [`BLOCK`] bytes in an aligned buffer and writes them
//! with `O_DIRECT` where the file system takes it (Linux), and plainly wherever it does not: a
//! file system that refuses `O_DIRECT`, or refuses one of its writes. The last, partial block
//! is always a plain write (so files smaller than a block are plain writes), and a file of any
//! length comes out byte for byte as a plain writer would leave it. [`read_exact_at`] and
//! [`read_in_pieces`] read the ciphertext files the same way, into an aligned buffer each
//! thread keeps, which the disk fills directly.

use std::fs::File;
use std::io::Write;

/// Bytes per direct write. Offsets and lengths of direct writes are multiples of it, and the
/// buffer is aligned to [`ALIGN`], which covers the block devices' and file systems'
/// requirements (512 or 4096 bytes).
pub const BLOCK: usize = 4 << 20;
const ALIGN: usize = 4096;

/// A buffered writer for large files that bypasses the page cache for whole blocks.
/// [`BulkWriter::finish`] writes the rest and gives the file back (in plain mode, so it can be
/// read through the same handle); dropping the writer writes the rest too, ignoring errors, as
/// `BufWriter` does.
pub struct BulkWriter {
    file: Option<File>,
    buffer: Aligned,
    filled: usize,
    written: u64,
    mode: Mode,
    /// A write failed: the file's contents are unknown, so nothing more is written to it (the
    /// caller removes it), not even by `Drop`.
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing written yet: direct writes are tried at the first whole block.
    Untried,
    Direct,
    Plain,
}

impl std::fmt::Debug for BulkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkWriter")
            .field("written", &self.written)
            .field("buffered", &self.filled)
            .field("direct", &(self.mode == Mode::Direct))
            .finish()
    }
}

impl BulkWriter {
    /// Writes to `file` from its current position, which must be 0 for direct writes to be
    /// tried (they need aligned offsets); at any other position the writer is plain.
    pub fn new(mut file: File) -> Self {
        let at_start = std::io::Seek::stream_position(&mut file).is_ok_and(|p| p == 0);
        Self {
            file: Some(file),
            buffer: Aligned::new(BLOCK),
            filled: 0,
            written: 0,
            mode: if at_start { Mode::Untried } else { Mode::Plain },
            failed: false,
        }
    }

    /// Bytes accepted so far, written or still buffered.
    pub fn len(&self) -> u64 {
        self.written + self.filled as u64
    }

    /// Whether nothing was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file, for syncing it (after [`Write::flush`], which writes what is buffered).
    pub fn get_ref(&self) -> &File {
        self.file
            .as_ref()
            .expect("a writer holds its file until finished")
    }

    /// Whether whole blocks go past the page cache (for tests and logs).
    pub fn is_direct(&self) -> bool {
        self.mode == Mode::Direct
    }

    /// Writes what is buffered and gives the file back, in plain mode. It is not synced: the
    /// caller decides whether the write must be durable.
    pub fn finish(mut self) -> std::io::Result<File> {
        self.write_rest()?;
        Ok(self
            .file
            .take()
            .expect("a writer holds its file until finished"))
    }

    /// Writes what is buffered, plainly: a partial block would need padding to go direct, and
    /// the handle is left plain for whoever reads through it.
    fn write_rest(&mut self) -> std::io::Result<()> {
        self.go_plain();
        if self.filled > 0 {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn go_plain(&mut self) {
        if self.mode == Mode::Direct {
            set_direct(self.get_ref(), false);
        }
        self.mode = Mode::Plain;
    }

    fn check_not_failed(&self) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other(
                "an earlier write to this file failed",
            ));
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        self.check_not_failed()?;
        let result = self.try_write_buffer();
        self.failed = result.is_err();
        result
    }

    fn try_write_buffer(&mut self) -> std::io::Result<()> {
        if self.mode == Mode::Untried {
            self.mode = if set_direct(self.get_ref(), true) {
                Mode::Direct
            } else {
                Mode::Plain
            };
        }
        let file = self
            .file
            .as_mut()
            .expect("a writer holds its file until finished");
        let mut rest = &self.buffer.window()[..self.filled];
        while !rest.is_empty() {
            match file.write(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A file system that took the flag but not this write: plain from here on.
                Err(e) if self.mode == Mode::Direct && is_invalid_argument(&e) => {
                    set_direct(file, false);
                    self.mode = Mode::Plain;
                }
                Err(e) => return Err(e),
            }
        }
        self.written += self.filled as u64;
        self.filled = 0;
        Ok(())
    }
}

impl Write for BulkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.check_not_failed()?;
        let take = data.len().min(BLOCK - self.filled);
        let at = self.filled;
        self.buffer.window()[at..at + take].copy_from_slice(&data[..take]);
        self.filled += take;
        if self.filled == BLOCK
            && let Err(e) = self.write_buffer()
        {
            // Not taken: an error means these bytes were not accepted.
            self.filled -= take;
            return Err(e);
        }
        Ok(take)
    }

    /// Writes what is buffered. The rest of the file is written plainly (a partial block leaves
    /// its offsets unaligned): callers flush at the end, not in between.
    fn flush(&mut self) -> std::io::Result<()> {
        self.write_rest()
    }
}

impl Drop for BulkWriter {
    fn drop(&mut self) {
        if self.file.is_some() && !self.failed {
            let _ = self.write_rest();
        }
    }
}

thread_local! {
    /// Each thread's aligned buffer for [`read_at`], allocated at its first read and kept. A
    /// direct read of up to a block from an unaligned offset covers at most one block and one
    /// alignment unit.
    static READ_BUFFER: std::cell::RefCell<Option<Aligned>> = const { std::cell::RefCell::new(None) };
}

/// Opens `path` for reading past the page cache where the file system allows it (plainly
/// elsewhere): for [`read_exact_at`] and [`read_in_pieces`].
pub fn open(path: &std::path::Path) -> std::io::Result<File> {
    let file = File::open(path)?;
    set_direct(&file, true);
    Ok(file)
}

/// Turns reads through `file` (a handle [`BulkWriter::finish`] gave back, say) past the page
/// cache where the file system allows it.
pub fn read_past_cache(file: &File) {
    set_direct(file, true);
}

/// Exactly `len` bytes of `file` at `offset`, read past the page cache where it can be: an
/// `UnexpectedEof` error if the file ends before them.
pub fn read_exact_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let wanted = (len - bytes.len()).min(BLOCK);
        let got = read_at(file, offset + bytes.len() as u64, wanted, |piece| {
            bytes.extend_from_slice(piece);
            piece.len()
        })?;
        if got < wanted {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(bytes)
}

/// Reads up to `len` bytes (at most [`BLOCK`]) at `offset` and hands them to `take`: fewer at
/// the end of the file. A direct read covers the aligned range around them.
fn read_at<R>(
    file: &File,
    offset: u64,
    len: usize,
    take: impl FnOnce(&[u8]) -> R,
) -> std::io::Result<R> {
    assert!(len <= BLOCK, "a bulk read takes at most one block");
    let read = |buffer: &mut Aligned| -> std::io::Result<R> {
        let window = buffer.window();
        let skip = (offset % ALIGN as u64) as usize;
        if is_direct(file) {
            let covering = (skip + len).div_ceil(ALIGN) * ALIGN;
            if let Some(got) = read_direct(file, &mut window[..covering], offset - skip as u64)? {
                let got = got.saturating_sub(skip).min(len);
                return Ok(take(&window[skip..skip + got]));
            }
        }
        let got = read_fully_at(file, &mut window[..len], offset)?;
        Ok(take(&window[..got]))
    };
    READ_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => read(buffer.get_or_insert_with(|| Aligned::new(BLOCK + ALIGN))),
        // Called from within a reader's callback on this thread: a buffer of its own.
        Err(_) => read(&mut Aligned::new(BLOCK + ALIGN)),
    })
}

/// Hands the whole of `file` to `push` in pieces of [`BLOCK`] bytes, read past the page cache
/// where the file system allows it; false at the first piece `push` refuses.
///
/// A second thread reads the next block while `push` takes this one: read past the cache, a
/// block waits on the disk (2.7 ms for 4 MiB on the benchmark machine), about as long as
/// hashing and adding it takes, so reading in turn would nearly double an aggregation.
pub fn read_in_pieces(file: &File, mut push: impl FnMut(&[u8]) -> bool) -> std::io::Result<bool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::sync_channel;
    let mut blocks = READ_AHEAD.with_borrow_mut(std::mem::take);
    blocks.resize_with(2, || Aligned::new(BLOCK));
    let (to_reader, empties) = sync_channel::<Aligned>(2);
    let (to_caller, fulls) = sync_channel::<(Aligned, std::io::Result<usize>)>(2);
    for block in blocks.drain(..) {
        to_reader
            .send(block)
            .expect("the channel holds both blocks");
    }
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let stop = &stop;
        let reader = scope.spawn(move || {
            let mut offset = 0u64;
            let mut kept = Vec::new();
            for mut block in empties.iter() {
                if stop.load(Ordering::Acquire) {
                    kept.push(block);
                    continue;
                }
                let got = read_fully_at_block(file, block.window(), offset);
                let last = !matches!(got, Ok(n) if n == BLOCK);
                offset += BLOCK as u64;
                if let Err(std::sync::mpsc::SendError((block, _))) = to_caller.send((block, got)) {
                    kept.push(block);
                }
                if last {
                    break;
                }
            }
            drop(to_caller);
            kept.extend(empties.try_iter());
            kept
        });
        let result = loop {
            let Ok((mut block, got)) = fulls.recv() else {
                break Ok(true);
            };
            let outcome = got.map(|got| {
                let accepted = got == 0 || push(&block.window()[..got]);
                (accepted, got < BLOCK || !accepted)
            });
            match outcome {
                Ok((_, false)) => {
                    if let Err(std::sync::mpsc::SendError(block)) = to_reader.send(block) {
                        blocks.push(block);
                    }
                }
                Ok((accepted, true)) => {
                    blocks.push(block);
                    break Ok(accepted);
                }
                Err(e) => {
                    blocks.push(block);
                    break Err(e);
                }
            }
        };
        stop.store(true, Ordering::Release);
        drop(to_reader);
        blocks.extend(reader.join().unwrap_or_default());
        blocks.extend(fulls.try_iter().map(|(block, _)| block));
        result
    });
    READ_AHEAD.with_borrow_mut(|kept| *kept = blocks);
    result
}

thread_local! {
    /// The two blocks each thread reads ahead into, allocated at its first read and kept.
    static READ_AHEAD: std::cell::RefCell<Vec<Aligned>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer aligned for direct reads and writes.
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let bytes = vec![0u8; len + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        Self { bytes, start, len }
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// Reads the block at `offset` (a multiple of [`BLOCK`]) into `window`, past the page cache
/// where the file system allows it; the bytes read, fewer at the end of the file.
fn read_fully_at_block(file: &File, window: &mut [u8], offset: u64) -> std::io::Result<usize> {
    if is_direct(file)
        && let Some(got) = read_direct(file, window, offset)?
    {
        return Ok(got);
    }
    read_fully_at(file, window, offset)
}

/// A direct read of `buffer` at `offset` (both aligned); `None` if the file system refused it,
/// in which case reads through `file` are plain from then on.
fn read_direct(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<Option<usize>> {
    match read_fully_at(file, buffer, offset) {
        Err(e) if is_invalid_argument(&e) => {
            set_direct(file, false);
            Ok(None)
        }
        got => got.map(Some),
    }
}

/// Reads until `buffer` is full or the file ends; the bytes read.
fn read_fully_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    let read = |buffer: &mut [u8], at: u64| std::os::unix::fs::FileExt::read_at(file, buffer, at);
    #[cfg(windows)]
    let read =
        |buffer: &mut [u8], at: u64| std::os::windows::fs::FileExt::seek_read(file, buffer, at);
    let mut got = 0;
    while got < buffer.len() {
        match read(&mut buffer[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn is_direct(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::fcntl_getfl(file).is_ok_and(|f| f.contains(rustix::fs::OFlags::DIRECT))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

fn is_invalid_argument(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// Turns `O_DIRECT` on or off; false where it cannot be set (not Linux, or a file system that
/// refuses it).
fn set_direct(file: &File, on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::OFlags;
        let Ok(flags) = rustix::fs::fcntl_getfl(file) else {
            return false;
        };
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        rustix::fs::fcntl_setfl(file, flags).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, on);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Whether the file system under `dir` takes `O_DIRECT`, asked by opening a file with the
    /// flag rather than through the code under test.
    #[cfg(target_os = "linux")]
    fn takes_direct_io(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(dir.join("probe"))
            .is_ok()
    }

    fn written_through(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk");
        let mut writer = BulkWriter::new(File::create(&path).unwrap());
        for piece in pieces {
            writer.write_all(piece).unwrap();
        }
        let direct = writer.is_direct();
        assert_eq!(
            writer.len(),
            pieces.iter().map(|p| p.len() as u64).sum::<u64>()
        );
        writer.finish().unwrap();
        (std::fs::read(&path).unwrap(), direct)
    }

    #[test]
    fn files_of_any_length_come_out_byte_for_byte() {
        for len in [
            0,
            1,
            ALIGN - 1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 12_345,
        ] {
            let bytes = pattern(len);
            // Whole, and in odd pieces that straddle the blocks.
            let (whole, _) = written_through(&[&bytes]);
            assert_eq!(whole, bytes, "{len} bytes written whole");
            let pieces: Vec<&[u8]> = bytes.chunks(1_000_003).collect();
            let (pieced, _) = written_through(&pieces);
            assert_eq!(pieced, bytes, "{len} bytes written in pieces");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn whole_blocks_go_past_the_page_cache_where_the_file_system_allows_it() {
        let dir = tempfile::tempdir().unwrap();
        let supported = takes_direct_io(dir.path());
        let (bytes, direct) = written_through(&[&pattern(2 * BLOCK + 5)]);
        assert_eq!(bytes, pattern(2 * BLOCK + 5));
        // A file system that refuses the flag gets plain writes, and the same bytes.
        assert_eq!(direct, supported);
    }

    #[test]
    fn the_finished_file_reads_back_through_its_own_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let bytes = pattern(BLOCK + 333);
        let mut writer = BulkWriter::new(file);
        writer.write_all(&bytes).unwrap();
        let file = writer.finish().unwrap();
        // Unaligned reads at unaligned offsets: the handle is plain again.
        use std::os::unix::fs::FileExt;
        let mut middle = vec![0u8; 1001];
        file.read_exact_at(&mut middle, 4097).unwrap();
        assert_eq!(middle, bytes[4097..5098]);
        let mut all = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
    }

    #[test]
    fn reads_past_the_cache_give_the_bytes_at_any_offset_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk");
        let bytes = pattern(2 * BLOCK + 777);
        std::fs::write(&path, &bytes).unwrap();
        let file = open(&path).unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!(is_direct(&file), takes_direct_io(dir.path()));
        for (offset, len) in [
            (0, BLOCK),
            (BLOCK, BLOCK),
            (2 * BLOCK, BLOCK),
            (2 * BLOCK, 5),
        ] {
            let got = read_at(&file, offset as u64, len, <[u8]>::to_vec).unwrap();
            let end = (offset + len).min(bytes.len());
            assert_eq!(got, bytes[offset..end], "{len} bytes at {offset}");
        }
        // Unaligned offsets (a direct read covers the aligned range around them), up to a
        // whole block from the last byte of an alignment unit.
        let got = read_at(&file, 4097, 1000, <[u8]>::to_vec).unwrap();
        assert_eq!(got, bytes[4097..5097]);
        let got = read_at(&file, ALIGN as u64 - 1, BLOCK, <[u8]>::to_vec).unwrap();
        assert_eq!(got, bytes[ALIGN - 1..ALIGN - 1 + BLOCK]);
        let got = read_at(&file, (2 * BLOCK + 5) as u64, BLOCK, <[u8]>::to_vec).unwrap();
        assert_eq!(got, bytes[2 * BLOCK + 5..]);
        // Exact reads: longer than a block from an unaligned offset, and past the end refused.
        let got = read_exact_at(&file, 4095, BLOCK + 9000).unwrap();
        assert_eq!(got, bytes[4095..4095 + BLOCK + 9000]);
        let past = read_exact_at(&file, (2 * BLOCK) as u64, 778).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut all = Vec::new();
        assert!(
            read_in_pieces(&file, |piece| {
                all.extend_from_slice(piece);
                true
            })
            .unwrap()
        );
        assert_eq!(all, bytes);
        let mut pieces = 0;
        assert!(
            !read_in_pieces(&file, |_| {
                pieces += 1;
                false
            })
            .unwrap()
        );
        assert_eq!(pieces, 1, "reading stops at the first refused piece");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_takes_nothing_and_ends_the_writer() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut writer = BulkWriter::new(full);
        let block = pattern(BLOCK);
        assert!(writer.write(&block).is_err(), "the disk is full");
        assert_eq!(writer.len(), 0, "the refused bytes were not taken");
        let later = writer.write(b"more").unwrap_err();
        assert!(later.to_string().contains("earlier write"), "{later}");
        // Dropping it writes nothing more (and does not panic).
        drop(writer);
    }

    #[test]
    fn reading_ahead_hands_over_every_piece_in_order_whatever_the_length() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK, 3 * BLOCK + 17] {
            let path = dir.path().join(format!("bulk-{len}"));
            let bytes = pattern(len);
            std::fs::write(&path, &bytes).unwrap();
            let file = open(&path).unwrap();
            let mut pieces = Vec::new();
            assert!(
                read_in_pieces(&file, |piece| {
                    pieces.push(piece.to_vec());
                    true
                })
                .unwrap()
            );
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= BLOCK));
            assert_eq!(pieces.concat(), bytes, "{len} bytes");
            // Refusing the second piece stops there, and the next reading starts afresh.
            let mut seen = 0;
            let accepted = read_in_pieces(&file, |_| {
                seen += 1;
                seen < 2
            })
            .unwrap();
            assert_eq!(accepted, len <= BLOCK, "{len} bytes");
            assert_eq!(seen, len.div_ceil(BLOCK).min(2));
        }
    }

    #[test]
    fn a_writer_dropped_unfinished_still_writes_what_it_took() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk");
        let bytes = pattern(BLOCK + 10);
        {
            let mut writer = BulkWriter::new(File::create(&path).unwrap());
            writer.write_all(&bytes).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_file_opened_past_its_start_is_written_plainly_where_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"head").unwrap();
        let mut writer = BulkWriter::new(file);
        let bytes = pattern(BLOCK + 1);
        writer.write_all(&bytes).unwrap();
        assert!(!writer.is_direct());
        writer.finish().unwrap();
        let all = std::fs::read(&path).unwrap();
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[4..], &bytes[..]);
    }
}
