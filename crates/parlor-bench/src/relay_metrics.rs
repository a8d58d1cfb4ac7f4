//! `--metrics URL,…`: the cluster's relay counters, read from each node's
//! Prometheus endpoint (`parlor serve --metrics ADDR`) before and after a
//! run, so that the report says how many NATS messages a room message cost.
//!
//! A node of a cluster hands a room message to NATS once per other node
//! with members of the room, never once per member, and counts each in
//! `parlor_cluster_relays_sent_total`. Summed over every node, the growth
//! of that counter during the run, divided by the room messages the run
//! had accepted, is the figure "NATS messages per room message"; it must
//! equal the number of remote nodes with members.
//!
//! The endpoint serves one fixed page, so one HTTP/1.0 GET over a plain
//! socket reads it, with a size cap and a deadline; like the load, it goes
//! to loopback addresses only.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::target::loopback_address;

/// Room messages and DMs a node handed to NATS for other nodes.
const RELAYS_SENT: &str = "parlor_cluster_relays_sent_total";
/// Room messages and DMs a node received from other nodes.
const RELAYS_RECEIVED: &str = "parlor_cluster_relays_received_total";
/// Relays a node dropped because its queue to NATS was full.
const RELAYS_DROPPED: &str = "parlor_cluster_relays_dropped_total";

/// The largest metrics page read; parlor's is a few KiB.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// How long one scrape may take, connecting included.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's metrics endpoint, `http://IP:PORT/metrics` on this machine (the
/// path is `/metrics` when left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsUrl {
    address: SocketAddr,
    path: String,
}

impl FromStr for MetricsUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricsUrl, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{text}`: a metrics URL starts with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/metrics"),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("`{text}`: no spaces or control characters"));
        }
        let address = loopback_address(authority).map_err(|err| format!("`{text}`: {err}"))?;
        Ok(MetricsUrl {
            address,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.address, self.path)
    }
}

impl Serialize for MetricsUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses a `--metrics` value (clap splits the list at commas).
pub(crate) fn metrics_url(text: &str) -> Result<MetricsUrl, String> {
    text.parse()
}

/// One node's relay counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RelayCounters {
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
}

impl RelayCounters {
    /// Reads the counters from a metrics page; an error names the one that
    /// is missing (a node not in cluster mode has none of them).
    fn from_page(page: &str) -> Result<RelayCounters, String> {
        let read = |name: &str| {
            sample_sum(page, name)
                .ok_or_else(|| format!("no {name} (is the node in cluster mode?)"))
        };
        Ok(RelayCounters {
            sent: read(RELAYS_SENT)?,
            received: read(RELAYS_RECEIVED)?,
            dropped: read(RELAYS_DROPPED)?,
        })
    }

    /// The growth from `before` to `self` (a counter that went down, as
    /// after a node's restart, counts from zero).
    pub(crate) fn since(&self, before: &RelayCounters) -> RelayCounters {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        RelayCounters {
            sent: delta(self.sent, before.sent),
            received: delta(self.received, before.received),
            dropped: delta(self.dropped, before.dropped),
        }
    }

    pub(crate) fn add(&mut self, other: &RelayCounters) {
        self.sent += other.sent;
        self.received += other.received;
        self.dropped += other.dropped;
    }
}

/// What the cluster's nodes handed to NATS during a run: the growth of
/// their relay counters, summed over every `--metrics` node, from before
/// the first connection to the end of the drain. The run's messages are
/// all of them, warmup included, so the relays and the messages they are
/// divided by are the same messages.
#[derive(Clone, Debug, Serialize)]
pub struct NatsRelays {
    /// Room messages (and DMs) the nodes handed to NATS for other nodes:
    /// the growth of `parlor_cluster_relays_sent_total`.
    #[serde(rename = "nats_relays_sent")]
    pub sent: u64,
    /// What the nodes received from other nodes
    /// (`parlor_cluster_relays_received_total`). Not checked: parlor
    /// counts there also the sync notices a node sends each second to the
    /// nodes it relayed to, which `relays_sent` leaves out, so it runs a
    /// few above `sent` (18 in a 3 s run over three nodes).
    #[serde(rename = "nats_relays_received")]
    pub received: u64,
    /// Relays dropped because a node's queue to NATS was full
    /// (`parlor_cluster_relays_dropped_total`).
    #[serde(rename = "nats_relays_dropped")]
    pub dropped: u64,
    /// The relays the accepted messages owe: for each, one per node, other
    /// than its sender's, with members of its room (each distinct
    /// `--server` address being one node).
    #[serde(rename = "nats_relays_owed")]
    pub owed: u64,
    /// NATS messages per room message: `sent` / the messages accepted. It
    /// must equal the number of remote nodes with members.
    #[serde(rename = "nats_relays_per_room_message")]
    pub per_message: Option<f64>,
    /// What that figure must be: `owed` / the messages accepted.
    #[serde(rename = "nats_relays_per_room_message_expected")]
    pub expected_per_message: Option<f64>,
}

impl NatsRelays {
    pub(crate) fn new(growth: RelayCounters, owed: u64, accepted: u64) -> NatsRelays {
        let per = |count: u64| {
            (accepted > 0).then(|| (count as f64 / accepted as f64 * 1000.0).round() / 1000.0)
        };
        NatsRelays {
            sent: growth.sent,
            received: growth.received,
            dropped: growth.dropped,
            owed,
            per_message: per(growth.sent),
            expected_per_message: per(owed),
        }
    }

    /// A line for each way the relays were not what the messages owe.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.sent != self.owed {
            failures.push(format!(
                "NATS relays: {} sent, {} owed (one per other node with members of the room; \
                 give --metrics for every node, and keep other clients off the cluster)",
                self.sent, self.owed
            ));
        }
        if self.dropped > 0 {
            failures.push(format!(
                "NATS relays dropped by a full queue: {}",
                self.dropped
            ));
        }
        failures
    }

    /// The summary's line.
    pub(crate) fn summary(&self, accepted: u64) -> String {
        let figure = |value: Option<f64>| value.map_or("-".into(), |v| format!("{v}"));
        format!(
            "  nats        {} relays sent for {accepted} room messages: {} per message \
             (owed {}), {} received, {} dropped\n",
            self.sent,
            figure(self.per_message),
            figure(self.expected_per_message),
            self.received,
            self.dropped
        )
    }
}

/// The sum of every sample of metric `name` in a Prometheus text page
/// (labels ignored); `None` when it has none.
fn sample_sum(page: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => rest.rsplit_once('}').map_or("", |(_, value)| value),
            _ => continue,
        };
        // The value, then maybe a timestamp.
        let value = value.split_whitespace().next()?;
        let value = value.parse::<u64>().ok().or_else(|| {
            let float = value.parse::<f64>().ok()?;
            (float.is_finite() && float >= 0.0).then_some(float as u64)
        })?;
        *found.get_or_insert(0) += value;
    }
    found
}

/// Reads the relay counters of every node, in `urls` order.
pub(crate) async fn scrape_all(urls: &[MetricsUrl]) -> anyhow::Result<Vec<RelayCounters>> {
    let mut counters = Vec::with_capacity(urls.len());
    for url in urls {
        let page = tokio::time::timeout(SCRAPE_TIMEOUT, fetch(url))
            .await
            .map_err(|_| anyhow!("{url}: no answer within {SCRAPE_TIMEOUT:?}"))?
            .with_context(|| format!("scraping {url}"))?;
        counters.push(RelayCounters::from_page(&page).map_err(|err| anyhow!("{url}: {err}"))?);
    }
    Ok(counters)
}

/// One HTTP/1.0 GET: the body of a `200` response.
async fn fetch(url: &MetricsUrl) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(url.address).await?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
        url.path, url.address
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut response)
        .await?;
    if response.len() as u64 > MAX_RESPONSE_BYTES {
        bail!("the response is larger than {MAX_RESPONSE_BYTES} bytes");
    }
    body_of(&response).map_err(|err| anyhow!(err))
}

/// The body of an HTTP response, which must be `200`.
fn body_of(response: &[u8]) -> Result<String, String> {
    let end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/1.") || code != Some("200") {
        return Err(format!("answered `{status}`"));
    }
    String::from_utf8(response[end + 4..].to_vec()).map_err(|_| "the body is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_on_loopback() {
        let url: MetricsUrl = "http://127.0.0.1:9464/metrics".parse().unwrap();
        assert_eq!(url.address, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(url.path, "/metrics");
        assert_eq!(url.to_string(), "http://127.0.0.1:9464/metrics");
        let bare: MetricsUrl = "http://127.0.0.1:9464".parse().unwrap();
        assert_eq!(bare, url);
        let v6: MetricsUrl = "http://[::1]:9464/x".parse().unwrap();
        assert_eq!(v6.to_string(), "http://[::1]:9464/x");
        for (text, why) in [
            ("127.0.0.1:9464/metrics", "starts with http://"),
            ("https://127.0.0.1:9464/metrics", "starts with http://"),
            ("http://10.0.0.1:9464/metrics", "not a loopback"),
            ("http://localhost:9464/metrics", "not an IP:PORT"),
            ("http://127.0.0.1/metrics", "not an IP:PORT"),
            ("http://127.0.0.1:9464/a b", "no spaces"),
        ] {
            let err = metrics_url(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    /// The lines parlor's endpoint writes (prometheus-client's encoding).
    const PAGE: &str = "\
# HELP parlor_cluster_relays_sent Room messages and DMs handed to NATS
# TYPE parlor_cluster_relays_sent counter
parlor_cluster_relays_sent_total 1234
parlor_cluster_relays_sent_total_bogus 7
# TYPE parlor_cluster_relays_dropped counter
parlor_cluster_relays_dropped_total 0
parlor_cluster_relays_received_total{node=\"b\"} 10
parlor_cluster_relays_received_total{node=\"c\"} 5.0 1700000000
# EOF
";

    #[test]
    fn counters_are_read_from_the_page() {
        assert_eq!(
            RelayCounters::from_page(PAGE),
            Ok(RelayCounters {
                sent: 1234,
                received: 15,
                dropped: 0
            })
        );
        assert_eq!(sample_sum(PAGE, "parlor_cluster_relays"), None);
        let single = "parlor_deliveries_total 9\n";
        let err = RelayCounters::from_page(single).unwrap_err();
        assert!(err.contains("cluster mode"), "{err}");
    }

    #[test]
    fn growth_is_summed_over_nodes() {
        let at = |sent, received| RelayCounters {
            sent,
            received,
            dropped: 0,
        };
        let mut total = RelayCounters::default();
        total.add(&at(150, 80).since(&at(100, 30)));
        total.add(&at(20, 5).since(&at(70, 0)));
        assert_eq!(total, at(70, 55));
    }

    #[test]
    fn relays_per_message_are_checked_against_what_is_owed() {
        let growth = RelayCounters {
            sent: 200,
            received: 200,
            dropped: 0,
        };
        let nats = NatsRelays::new(growth, 200, 100);
        assert_eq!(nats.per_message, Some(2.0));
        assert_eq!(nats.expected_per_message, Some(2.0));
        assert!(nats.failures().is_empty());
        let json = serde_json::to_value(&nats).unwrap();
        assert_eq!(json["nats_relays_per_room_message"], 2.0);
        assert!(nats.summary(100).contains("2 per message (owed 2)"));

        let short = NatsRelays::new(
            RelayCounters {
                dropped: 3,
                ..growth
            },
            300,
            150,
        );
        assert_eq!(short.per_message, Some(1.333));
        assert_eq!(short.failures().len(), 2);
        assert_eq!(NatsRelays::new(growth, 0, 0).per_message, None);
    }

    #[test]
    fn only_a_200_has_a_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(body_of(ok), Ok("abc".into()));
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\nOnly GET /metrics";
        assert!(body_of(missing).unwrap_err().contains("404"));
        assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    /// A scrape over a real socket, against a one-shot endpoint.
    #[tokio::test]
    async fn scrapes_a_page_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: MetricsUrl = format!("http://{}/metrics", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 1024];
            let n = stream.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            request
        });
        let counters = scrape_all(std::slice::from_ref(&url)).await.unwrap();
        assert_eq!(counters[0].sent, 1234);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /metrics HTTP/1.0\r\n"),
            "{request}"
        );
    }
}
