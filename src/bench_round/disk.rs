//! The disk each role uses while the rounds run, sampled, so that the report gives its peak
//! (kept models, uploads and partials come and go) and not only what is left at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bytes in the files under `dir`, at any depth; a file removed while it is counted counts 0.
pub fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => size_of(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The largest size seen of each directory, sampled on a thread until [`DiskSampler::finish`].
#[derive(Debug)]
pub struct DiskSampler {
    stop: Arc<AtomicBool>,
    sampling: std::thread::JoinHandle<Vec<u64>>,
}

impl DiskSampler {
    /// Takes the first sample before it returns, then one every `every`.
    pub fn start(dirs: Vec<PathBuf>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let mut peaks: Vec<u64> = dirs.iter().map(|dir| size_of(dir)).collect();
        let sampling = std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                // One last sample after the stop, so that what is left is counted too.
                let last = stopped.load(Ordering::Relaxed);
                for (peak, dir) in peaks.iter_mut().zip(&dirs) {
                    *peak = (*peak).max(size_of(dir));
                }
                if last {
                    return peaks;
                }
            }
        });
        Self { stop, sampling }
    }

    /// Each directory's peak, in the order given.
    pub fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.sampling.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_counts_its_files_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/d"), [0u8; 23]).unwrap();
        assert_eq!(size_of(dir.path()), 123);
        assert_eq!(size_of(&dir.path().join("missing")), 0);
    }

    #[test]
    fn the_sampler_keeps_the_peak_of_files_that_have_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model");
        std::fs::write(&file, [0u8; 1000]).unwrap();
        let sampler = DiskSampler::start(vec![dir.path().to_owned()], Duration::from_millis(5));
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.path().join("smaller"), [0u8; 10]).unwrap();
        assert_eq!(sampler.finish(), vec![1000]);
    }
}
