//! What a process uses, from `/proc` (Linux): resident memory now and at its peak, and CPU time.
//! The benchmarks read the operator's with these.

use std::time::Duration;

use anyhow::{Context, Result};

/// A process's memory, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now, in bytes.
    pub rss: u64,
    /// `VmHWM`: the peak of `VmRSS` since the process started, in bytes.
    pub hwm: u64,
    /// `RssAnon`: the resident anonymous part of `rss` (heap, stacks), in bytes.
    pub anon: u64,
    /// `RssFile`: the resident file-backed part of `rss` (mostly the executable's own pages), in
    /// bytes.
    pub file: u64,
}

/// `VmRSS` and `VmHWM` of process `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = |field: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .with_context(|| format!("no {field} in {path}"))?;
        let value = line.trim().trim_end_matches("kB").trim();
        Ok(value.parse::<u64>().with_context(|| format!("{field} {value:?}"))? * 1024)
    };
    Ok(Memory {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
        anon: kib("RssAnon:")?,
        file: kib("RssFile:")?,
    })
}

/// User plus system CPU time that process `pid` has used (`utime` + `stime` of
/// `/proc/<pid>/stat`; clock-tick resolution, usually 10 ms).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name (which may contain spaces): state is field 3,
    // utime field 14 and stime field 15 (1-based over the whole line).
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("{path} has no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("field {n} of {path}"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 { per_second as u64 } else { 100 };
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = memory(me).expect("memory");
        assert!(m.rss > 0 && m.hwm >= m.rss, "{m:?}");
        let before = cpu_time(me).expect("cpu");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time(me).expect("cpu") > before);
    }
}
