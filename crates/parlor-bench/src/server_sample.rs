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
//!
//! A cluster's nodes (`--server-pid A,B,C`) are read as one server: memory
//! is the sum of their resident memory, CPU the sum of their CPU time (so a
//! share above 100 % of a core is possible), and the server is alive only
//! if every node is. The keys stay the same, so a report of one server
//! reads exactly as before; only `server_pid` becomes the list of pids, and
//! `server_cpus` each node's CPUs in the same order, when there are several.

use serde::Serialize;

use super::process;
use super::target::one_or_list;

/// The figures every workload reports about the server process, all `null`
/// without `--server-pid`. Flattened into each report, so its keys are the
/// report's own `server_*` keys. With several pids (a cluster's nodes),
/// the memory figures are sums over them.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSample {
    /// The `--server-pid`s the figures were read from: `null` without, the
    /// pid itself with one, the list with several.
    #[serde(rename = "server_pid", serialize_with = "one_or_list")]
    pub pids: Vec<u32>,
    /// The CPUs the server may run on, as the kernel lists them ("0",
    /// "0-1"): a server sharing the bench's core sets a lower pace. With
    /// several pids, each one's list in `--server-pid` order, separated by
    /// " / " ("0 / 1 / 0-1").
    #[serde(rename = "server_cpus")]
    pub cpus: Option<String>,
    /// Resident memory, in KiB, before the bench connected anything
    /// (summed over the pids).
    #[serde(rename = "server_rss_kb_before")]
    pub rss_kb_before: Option<u64>,
    /// Resident memory, in KiB, once every connection was set up (summed
    /// over the pids).
    #[serde(rename = "server_rss_kb_loaded")]
    pub rss_kb_loaded: Option<u64>,
    /// Whether the server process (every one of them) was still there when
    /// the run was over: a server that died under the load fails the run.
    #[serde(rename = "server_alive_after")]
    pub alive_after: Option<bool>,
    /// The pids that were gone after the run, for the failure line.
    #[serde(skip)]
    pub gone: Vec<u32>,
}

impl ServerSample {
    /// What one connection cost the server, in bytes: (loaded − before) /
    /// `connections`. `None` without both readings or without connections.
    pub(crate) fn rss_bytes_per_conn(&self, connections: usize) -> Option<u64> {
        let connections = u64::try_from(connections).ok().filter(|&n| n > 0)?;
        let (before, loaded) = self.rss_kb_before.zip(self.rss_kb_loaded)?;
        Some(loaded.saturating_sub(before) * 1024 / connections)
    }

    /// The failure line of a run after which the server process (or one
    /// of a cluster's) is gone.
    pub(crate) fn failure(&self) -> Option<String> {
        if self.alive_after != Some(false) {
            return None;
        }
        Some(match self.pids.as_slice() {
            [_] => "the server process is gone".into(),
            _ => {
                let gone: Vec<String> = self.gone.iter().map(u32::to_string).collect();
                format!("server processes gone: {}", gone.join(", "))
            }
        })
    }
}

/// Reads the server process (or a cluster's processes) during a run: every
/// reading is `None` without `--server-pid`, or when `/proc` does not
/// answer for one of them.
#[derive(Clone, Debug)]
pub(crate) struct ServerWatch {
    pids: Vec<u32>,
}

impl ServerWatch {
    pub(crate) fn new(pids: &[u32]) -> ServerWatch {
        ServerWatch {
            pids: pids.to_vec(),
        }
    }

    /// The `--server-pid`s; empty without.
    pub(crate) fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Resident memory (VmRSS) now, in KiB, summed over the pids.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.sum(process::rss_kib)
    }

    /// The most resident memory the server ever had (VmHWM), in KiB; with
    /// several pids, the sum of each one's peak (which they need not have
    /// reached at the same time).
    pub(crate) fn hwm_kib(&self) -> Option<u64> {
        self.sum(process::hwm_kib)
    }

    /// `read` summed over the pids; `None` without pids or if one fails.
    fn sum(&self, read: impl Fn(u32) -> std::io::Result<u64>) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| read(pid).ok()).sum()
    }

    /// The report's block, from the two memory readings every workload
    /// takes; the CPUs and whether the server is alive are read now, once
    /// the run is over.
    pub(crate) fn sample(
        &self,
        rss_kb_before: Option<u64>,
        rss_kb_loaded: Option<u64>,
    ) -> ServerSample {
        let cpus: Option<Vec<String>> = self
            .pids
            .iter()
            .map(|&pid| process::allowed_cpus(pid))
            .collect();
        let gone: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|&pid| !process::is_alive(pid))
            .collect();
        ServerSample {
            pids: self.pids.clone(),
            cpus: cpus
                .filter(|cpus| !cpus.is_empty())
                .map(|cpus| cpus.join(" / ")),
            rss_kb_before,
            rss_kb_loaded,
            alive_after: (!self.pids.is_empty()).then_some(gone.is_empty()),
            gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_needs_both_readings_and_connections() {
        let sample = |before, loaded| ServerSample {
            pids: vec![1],
            cpus: None,
            rss_kb_before: before,
            rss_kb_loaded: loaded,
            alive_after: Some(true),
            gone: Vec::new(),
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
        let sample = ServerWatch::new(&[std::process::id()]).sample(Some(1), None);
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
        assert_eq!(json["server_pid"], std::process::id());
        assert_eq!(sample.failure(), None);
    }

    /// Without `--server-pid`, every figure is `null`.
    #[test]
    fn no_pid_reads_nothing() {
        let watch = ServerWatch::new(&[]);
        assert_eq!(watch.rss_kib(), None);
        assert_eq!(watch.hwm_kib(), None);
        let json = serde_json::to_value(watch.sample(None, None)).unwrap();
        assert!(json.as_object().unwrap().values().all(|v| v.is_null()));
    }

    /// Several pids are one server: memory summed, alive only if all are,
    /// the pids and their CPUs listed in order.
    #[test]
    fn several_pids_are_summed() {
        let me = std::process::id();
        let one = ServerWatch::new(&[me]);
        let twice = ServerWatch::new(&[me, me]);
        let (single, double) = (one.hwm_kib().unwrap(), twice.hwm_kib().unwrap());
        assert!(double >= 2 * single, "{double} < 2 × {single}");
        let sample = twice.sample(Some(10), Some(20));
        let json = serde_json::to_value(&sample).unwrap();
        assert_eq!(json["server_pid"], serde_json::json!([me, me]));
        let cpus = process::allowed_cpus(me).unwrap();
        assert_eq!(json["server_cpus"], format!("{cpus} / {cpus}"));
        assert_eq!(json["server_alive_after"], true);
        assert_eq!(sample.rss_bytes_per_conn(10), Some(1024));
        assert_eq!(sample.failure(), None);

        let dead = ServerWatch::new(&[me, u32::MAX]);
        assert_eq!(dead.rss_kib(), None, "one unreadable pid: no sum");
        let sample = dead.sample(None, None);
        assert_eq!(sample.alive_after, Some(false));
        assert_eq!(
            sample.failure().as_deref(),
            Some(format!("server processes gone: {}", u32::MAX).as_str())
        );
    }
}
