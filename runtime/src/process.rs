//! What a role reports about its own process.

/// The peak resident set size of this process (Linux `VmHWM`), in bytes; `None` elsewhere.
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_peak_memory(&status)
}

fn parse_peak_memory(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_size_is_read_in_kibibytes_from_the_status_file() {
        let status = "Name:\tquorate\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_peak_memory(status), Some(12345 * 1024));
        assert_eq!(parse_peak_memory("Name:\tquorate\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_memory().is_some_and(|bytes| bytes > 0));
        }
    }
}
