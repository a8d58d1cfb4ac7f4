//! The server's side of every report: with `--server-pid`, what
//! `/proc/PID` says about the server process around a run.
//!
//! Every workload reads the server the same way (its memory before anything
//! connects and once everything is set up, its CPUs, whether it survived),
//! so those figures are one [`ServerSample`], flattened into each report
//! under the same JSON keys: results of different workloads line up, and a
//! script reads them with the same code. What only one workload measures
//! (transfer's peak, idle's memory at the end of the hold) stays in its own
//! report.

use serde::Serialize;

use super::process;

/// The figures every workload reports about the server process, all `null`
/// without `--server-pid`. Flattened into each report, so its keys are the
/// report's own `server_*` keys.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSample {
    /// The `--server-pid` the figures were read from.
    #[serde(rename = "server_pid")]
    pub pid: Option<u32>,
    /// The CPUs the server may run on, as the kernel lists them ("0",
    /// "0-1"): a server sharing the bench's core sets a lower pace.
    #[serde(rename = "server_cpus")]
    pub cpus: Option<String>,
    /// Resident memory, in KiB, before the bench connected anything.
    #[serde(rename = "server_rss_kb_before")]
    pub rss_kb_before: Option<u64>,
    /// Resident memory, in KiB, once every connection was set up.
    #[serde(rename = "server_rss_kb_loaded")]
    pub rss_kb_loaded: Option<u64>,
    /// Whether the server process was still there when the run was over:
    /// a server that died under the load fails the run.
    #[serde(rename = "server_alive_after")]
    pub alive_after: Option<bool>,
}

impl ServerSample {
    /// What one connection cost the server, in bytes: (loaded − before) /
    /// `connections`. `None` without both readings or without connections.
    pub(crate) fn rss_bytes_per_conn(&self, connections: usize) -> Option<u64> {
        let connections = u64::try_from(connections).ok().filter(|&n| n > 0)?;
        let (before, loaded) = self.rss_kb_before.zip(self.rss_kb_loaded)?;
        Some(loaded.saturating_sub(before) * 1024 / connections)
    }

    /// The failure line of a run after which the server process is gone.
    pub(crate) fn failure(&self) -> Option<String> {
        (self.alive_after == Some(false)).then(|| "the server process is gone".into())
    }
}

/// Reads the server process during a run: every reading is `None` without
/// `--server-pid`, or when `/proc` does not answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerWatch {
    pid: Option<u32>,
}

impl ServerWatch {
    pub(crate) fn new(pid: Option<u32>) -> ServerWatch {
        ServerWatch { pid }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Resident memory (VmRSS) now, in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| process::rss_kib(pid).ok())
    }

    /// The most resident memory the server ever had (VmHWM), in KiB.
    pub(crate) fn hwm_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| process::hwm_kib(pid).ok())
    }

    /// The report's block, from the two memory readings every workload
    /// takes; the CPUs and whether the server is alive are read now, once
    /// the run is over.
    pub(crate) fn sample(
        &self,
        rss_kb_before: Option<u64>,
        rss_kb_loaded: Option<u64>,
    ) -> ServerSample {
        ServerSample {
            pid: self.pid,
            cpus: self.pid.and_then(process::allowed_cpus),
            rss_kb_before,
            rss_kb_loaded,
            alive_after: self.pid.map(process::is_alive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_needs_both_readings_and_connections() {
        let sample = |before, loaded| ServerSample {
            pid: Some(1),
            cpus: None,
            rss_kb_before: before,
            rss_kb_loaded: loaded,
            alive_after: Some(true),
        };
        assert_eq!(
            sample(Some(1000), Some(1100)).rss_bytes_per_conn(10),
            Some(10_240)
        );
        assert_eq!(
            sample(Some(1000), Some(900)).rss_bytes_per_conn(10),
            Some(0)
        );
        assert_eq!(sample(Some(1000), Some(1100)).rss_bytes_per_conn(0), None);
        assert_eq!(sample(None, Some(1100)).rss_bytes_per_conn(10), None);
        assert_eq!(sample(None, None).failure(), None);
    }

    /// The block adds exactly the keys the reports had before it was one.
    #[test]
    fn flattened_keys_are_the_reports_server_keys() {
        let sample = ServerWatch::new(Some(std::process::id())).sample(Some(1), None);
        let json = serde_json::to_value(&sample).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "server_alive_after",
                "server_cpus",
                "server_pid",
                "server_rss_kb_before",
                "server_rss_kb_loaded"
            ]
        );
        assert_eq!(json["server_alive_after"], true);
        assert_eq!(sample.failure(), None);
    }
}
