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

/// The CPU time this process has used so far, in user code and in the kernel on its behalf.
/// Reported beside wall time because on a machine whose processes share its cores the wall
/// time of one step says little of its cost, and because the kernel's share (copies, page
/// faults, the page cache) is a finding of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuSeconds {
    pub user: f64,
    pub system: f64,
}

impl CpuSeconds {
    /// This process's CPU time (Linux `/proc/self/stat`); `None` elsewhere.
    pub fn of_this_process() -> Option<Self> {
        parse_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// Two runs of one role (a restart) add up.
    pub fn plus(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// Clock ticks per second in `/proc` (Linux's USER_HZ, 100 on every architecture it runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// `utime` and `stime` are the 14th and 15th fields; the 2nd (the command, in parentheses)
/// may hold spaces and parentheses of its own, so fields are counted after its last ')'.
fn parse_cpu_seconds(stat: &str) -> Option<CpuSeconds> {
    let (_, after_command) = stat.rsplit_once(')')?;
    let mut fields = after_command.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuSeconds {
        user: user as f64 / TICKS_PER_SECOND,
        system: system as f64 / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_whatever_it_holds() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "4242 (quo rate) x) S 1 4242 4242 0 -1 4194304 900 0 3 0 1234 567 0 0 20 0";
        assert_eq!(
            parse_cpu_seconds(stat),
            Some(CpuSeconds {
                user: 12.34,
                system: 5.67
            })
        );
        assert_eq!(parse_cpu_seconds("4242 (quorate) S 1 2"), None);
        if cfg!(target_os = "linux") {
            // Spend some user time, then it is seen.
            let mut x = 0u64;
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let cpu = CpuSeconds::of_this_process().unwrap();
            assert!(cpu.user + cpu.system > 0.0, "{cpu:?}");
        }
    }

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
