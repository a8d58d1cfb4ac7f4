//! What the operating system says about the bench and the server: CPU time,
//! resident memory, CPU affinity, and the open-file limit.
//!
//! The bench shares a two-core machine with the server (server pinned to
//! CPU 0, bench to CPU 1), so its own CPU use is part of every result: a
//! bench near 100 % of its core, not the server, may have set the pace.
//! The server's figures come from `/proc/PID` when `--server-pid` is given.

use std::io;
use std::time::{Duration, Instant};

/// CPU time (user + system) this process has used so far.
pub(crate) fn own_cpu_time() -> Duration {
    cpu_time_of(libc::RUSAGE_SELF)
}

/// CPU time (user + system) the calling thread has used so far: what one
/// job on a worker thread cost, whatever else the machine was doing.
pub(crate) fn thread_cpu_time() -> Duration {
    cpu_time_of(libc::RUSAGE_THREAD)
}

/// CPU time the calling thread has used so far, in nanoseconds, from the
/// kernel's precise count: fine enough to add up many short stretches of
/// work done between waits.
pub(crate) fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime only writes into the struct we hand it, and a
    // zeroed `timespec` is a valid value of that plain C struct.
    let time = unsafe {
        let mut time: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time);
        time
    };
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

fn cpu_time_of(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it, and a
    // zeroed `rusage` is a valid value of that plain C struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user + system, all threads) process `pid` has used so far.
pub(crate) fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after its closing parenthesis are plain numbers. utime and
    // stime are fields 14 and 15, so 12th and 13th after the state field.
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| malformed("stat"))?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = || -> io::Result<u64> {
        fields
            .next()
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| malformed("stat"))
    };
    let total = ticks()? + ticks()?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    kib_field(pid, "VmRSS:")
}

/// The most resident memory process `pid` ever had (VmHWM), in KiB.
pub(crate) fn hwm_kib(pid: u32) -> io::Result<u64> {
    kib_field(pid, "VmHWM:")
}

fn kib_field(pid: u32, name: &str) -> io::Result<u64> {
    status_field(pid, name)?
        .split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| malformed("status"))
}

/// The CPUs process `pid` may run on, as the kernel lists them ("0", "0-1").
pub(crate) fn allowed_cpus(pid: u32) -> Option<String> {
    status_field(pid, "Cpus_allowed_list:").ok()
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    match status_field(pid, "State:") {
        Ok(state) => !state.starts_with('Z') && !state.starts_with('X'),
        Err(_) => false,
    }
}

fn status_field(pid: u32, name: &str) -> io::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| malformed("status"))
}

fn malformed(file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected /proc/PID/{file} format"),
    )
}

/// CPU use of the bench and the server over an interval, as percent of one
/// core (chatload's convention: 100 means one core fully busy). With the
/// several processes of a cluster, the server's share is their sum, so it
/// may exceed 100.
pub(crate) struct CpuMeter {
    started: Instant,
    own: Duration,
    /// The server processes and the CPU time they had used together.
    server: Option<(Vec<u32>, Duration)>,
}

/// The result of a [`CpuMeter`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuShare {
    pub bench_pct: f64,
    pub server_pct: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring the bench and the `server_pids` (none, one, or the
    /// nodes of a cluster).
    pub(crate) fn start(server_pids: &[u32]) -> CpuMeter {
        let server = (!server_pids.is_empty())
            .then(|| Some((server_pids.to_vec(), total_cpu_time(server_pids)?)))
            .flatten();
        CpuMeter {
            started: Instant::now(),
            own: own_cpu_time(),
            server,
        }
    }

    /// The shares since the start; the server's is `None` when one of its
    /// processes could not be read at either end.
    pub(crate) fn stop(&self) -> CpuShare {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let percent = |used: Duration| used.as_secs_f64() / wall * 100.0;
        CpuShare {
            bench_pct: percent(own_cpu_time().saturating_sub(self.own)),
            server_pct: self.server.as_ref().and_then(|(pids, before)| {
                Some(percent(total_cpu_time(pids)?.saturating_sub(*before)))
            }),
        }
    }
}

/// The CPU time the processes `pids` have used together; `None` if one of
/// them cannot be read.
fn total_cpu_time(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|&pid| cpu_time(pid).ok()).sum()
}

/// Raises the soft open-file limit so that `needed` descriptors fit, as the
/// server does at startup. Returns the limit in force when that is not
/// possible (the hard limit is lower), so the caller can refuse the run
/// before opening anything.
pub(crate) fn ensure_open_files(needed: u64) -> Result<(), String> {
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit >= needed => Ok(()),
        Ok(limit) => Err(format!(
            "needs {needed} open files but the limit is {limit}; raise the hard limit \
             (ulimit -Hn) or open fewer connections"
        )),
        Err(err) => Err(format!("cannot raise the open-file limit: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(hwm_kib(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
        assert!(allowed_cpus(pid).is_some());
        assert!(thread_cpu_time() <= own_cpu_time());
        let before = thread_cpu_ns();
        let spun = (0..100_000u64).fold(0u64, |sum, n| sum.wrapping_add(n * n));
        assert!(std::hint::black_box(spun) > 0 && thread_cpu_ns() >= before);
        assert!(!is_alive(u32::MAX));
    }
}
