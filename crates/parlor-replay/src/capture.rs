//! Reading a pcap file into what each client sent, and when.
//!
//! A capture holds TCP segments, not frames: one frame may be split over
//! several segments, one segment may carry several frames, and segments may
//! be retransmitted or captured out of order. So each connection's
//! client→server byte stream is first reassembled by sequence number, and
//! only then cut into frames with the same [`FrameCodec`] the server uses.
//! A frame is dated by the packet that completed it: that is when the server
//! could first have read it.
//!
//! The client of a connection is the side that sent the SYN. Connections
//! that were refused, or that were already open when the capture started,
//! cannot be replayed and are left out with a note. Only the server's FIN
//! and RST are kept from the other direction: whichever side closed first
//! decides how the replay ends that connection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapParser;
use pcap_file::DataLink;

use parlor_proto::{FrameCodec, HEADER_LEN, MAX_CLIENT_PAYLOAD};

/// The first four bytes of a pcapng file (its section header block type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// What a capture says each client did.
#[derive(Debug)]
pub struct Capture {
    /// Every replayable connection, in the order the clients connected.
    pub clients: Vec<ClientFlow>,
    /// Connections (or packets) left out, each with the reason.
    pub skipped: Vec<String>,
}

/// One client connection, seen from the client's side.
#[derive(Debug)]
pub struct ClientFlow {
    /// The client's address in the capture.
    pub peer: SocketAddr,
    /// The captured server's address.
    pub server: SocketAddr,
    /// When the client sent its SYN.
    pub connected: Moment,
    /// The client's byte stream, cut into frames, in order.
    pub sent: Vec<Sent>,
    /// How the connection ended in the capture.
    pub end: End,
}

/// When something happened: the time since the capture's first packet, and
/// the packet's index, which orders events captured in the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment {
    /// Time since the capture's first packet; the replay keeps these gaps.
    pub at: Duration,
    /// The packet's index in the file, from 0.
    pub packet: usize,
}

/// A piece of the client's byte stream.
#[derive(Clone, Debug)]
pub struct Sent {
    /// When the last byte of it was captured.
    pub when: Moment,
    /// The exact bytes, header included.
    pub bytes: Bytes,
    /// Whether the bytes are a frame, and of which opcode.
    pub kind: SentKind,
}

/// What a [`Sent`] holds: a frame is replayed and its reply checked; the
/// rest is sent as it was, to see what the server makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentKind {
    /// A whole frame with this opcode.
    Frame(u8),
    /// The rest of the stream from a point where it stops being frames
    /// (bad magic, or a length over the protocol's maximum).
    Garbage,
    /// A frame that the client never finished before the capture (or the
    /// connection) ended.
    Unfinished,
}

/// How a connection ended in the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed (FIN or RST) before the server did.
    ClientClosed(Moment),
    /// The server closed (FIN or RST) first.
    ServerClosed(Moment),
    /// Neither side closed before the capture stopped.
    StillOpen,
}

/// Why a capture cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// A pcapng file: the reader takes classic pcap only, and says how to
    /// convert.
    #[error(
        "this is a pcapng file, and only pcap is supported; \
         convert it with `editcap -F pcap IN.pcapng OUT.pcap`"
    )]
    PcapNg,
    /// The file does not start with a pcap header.
    #[error("not a pcap file ({0})")]
    NotPcap(pcap_file::PcapError),
    /// A packet record could not be read.
    #[error("packet {index} is cut short or damaged ({source}); is the file truncated?")]
    BadPacket {
        /// The packet's index, from 0.
        index: usize,
        /// What the pcap reader said.
        source: pcap_file::PcapError,
    },
    /// Packets of a link layer the reader cannot strip to IP.
    #[error(
        "link type {0:?} is not supported; capture on an Ethernet or loopback \
         interface (Linux), with Linux cooked capture (`-i any`), or as raw IP"
    )]
    LinkType(DataLink),
    /// Nothing to replay: no connection was captured from its SYN.
    #[error("the capture holds no TCP connection whose handshake was captured")]
    NoConnections,
    /// Clients of two servers: their replies could not be told apart from
    /// one server's behaviour.
    #[error(
        "the capture holds connections to more than one server ({0} and {1}); \
         replay needs the traffic of a single server"
    )]
    SeveralServers(SocketAddr, SocketAddr),
    /// A client's stream has a hole, so its frames after it cannot be cut.
    #[error(
        "bytes sent by {peer} are missing from the capture after the first \
         {offset} (lost or truncated packets)"
    )]
    Gap {
        /// The client whose stream has the hole.
        peer: SocketAddr,
        /// Bytes of its stream that were captured before the hole.
        offset: usize,
    },
}

impl Capture {
    /// Reads and reassembles a pcap file.
    pub fn read(path: &Path) -> Result<Capture, CaptureError> {
        let data = std::fs::read(path).map_err(CaptureError::Read)?;
        Capture::parse(&data)
    }

    /// Reassembles a pcap file already in memory.
    pub fn parse(data: &[u8]) -> Result<Capture, CaptureError> {
        if data.starts_with(&PCAPNG_MAGIC) {
            return Err(CaptureError::PcapNg);
        }
        let (mut rest, parser) = PcapParser::new(data).map_err(CaptureError::NotPcap)?;
        let link = parser.header().datalink;
        let link = LinkLayer::of(link)?;
        let mut flows = FlowTable::default();
        let mut undecodable = 0;
        let mut first_timestamp = None;
        let mut index = 0;
        while !rest.is_empty() {
            let (remainder, packet) = parser
                .next_packet(rest)
                .map_err(|source| CaptureError::BadPacket { index, source })?;
            rest = remainder;
            let start = *first_timestamp.get_or_insert(packet.timestamp);
            let when = Moment {
                at: packet.timestamp.saturating_sub(start),
                packet: index,
            };
            index += 1;
            match link.slice(&packet.data) {
                Ok(sliced) => {
                    if let Some(segment) = Segment::from_sliced(&sliced) {
                        flows.add(&segment, when);
                    }
                }
                Err(_) => undecodable += 1,
            }
        }
        let mut capture = flows.finish()?;
        if undecodable > 0 {
            capture.skipped.push(format!(
                "{undecodable} packets could not be decoded and were left out"
            ));
        }
        Ok(capture)
    }
}

/// The link layers whose packets etherparse can take apart.
#[derive(Clone, Copy)]
enum LinkLayer {
    Ethernet,
    LinuxCooked,
    RawIp,
}

impl LinkLayer {
    fn of(link: DataLink) -> Result<LinkLayer, CaptureError> {
        match link {
            DataLink::ETHERNET => Ok(LinkLayer::Ethernet),
            DataLink::LINUX_SLL => Ok(LinkLayer::LinuxCooked),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Ok(LinkLayer::RawIp),
            other => Err(CaptureError::LinkType(other)),
        }
    }

    fn slice(self, data: &[u8]) -> Result<SlicedPacket<'_>, etherparse::err::packet::SliceError> {
        match self {
            LinkLayer::Ethernet => SlicedPacket::from_ethernet(data),
            LinkLayer::LinuxCooked => SlicedPacket::from_linux_sll(data),
            LinkLayer::RawIp => SlicedPacket::from_ip(data),
        }
    }
}

/// The parts of a TCP segment that reassembly needs.
struct Segment<'a> {
    source: SocketAddr,
    destination: SocketAddr,
    sequence: u32,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The TCP segment in a packet, if it holds one.
    fn from_sliced(sliced: &SlicedPacket<'a>) -> Option<Segment<'a>> {
        let (source, destination): (IpAddr, IpAddr) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            _ => return None,
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            return None;
        };
        Some(Segment {
            source: SocketAddr::new(source, tcp.source_port()),
            destination: SocketAddr::new(destination, tcp.destination_port()),
            sequence: tcp.sequence_number(),
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload: tcp.payload(),
        })
    }
}

/// Every connection seen so far.
#[derive(Default)]
struct FlowTable {
    flows: Vec<Flow>,
    /// The connection currently using each address pair (a pair can be
    /// reused by a later connection).
    current: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Address pairs seen without a SYN: connections already open when the
    /// capture started.
    unknown: Vec<(SocketAddr, SocketAddr)>,
}

struct Flow {
    client: SocketAddr,
    server: SocketAddr,
    syn: Moment,
    /// Sequence number of the client's SYN, to recognise a retransmitted one.
    client_isn: u32,
    accepted: bool,
    to_server: Stream,
    server_fin: Option<Moment>,
}

impl FlowTable {
    fn add(&mut self, segment: &Segment<'_>, when: Moment) {
        let key = ordered(segment.source, segment.destination);
        let existing = self.current.get(&key).copied();
        if segment.syn && !segment.ack {
            let retransmitted = existing.is_some_and(|index| {
                let flow = &self.flows[index];
                flow.client == segment.source && flow.client_isn == segment.sequence
            });
            if !retransmitted {
                self.current.insert(key, self.flows.len());
                self.flows.push(Flow {
                    client: segment.source,
                    server: segment.destination,
                    syn: when,
                    client_isn: segment.sequence,
                    accepted: false,
                    to_server: Stream::starting_after(segment.sequence),
                    server_fin: None,
                });
            }
            return;
        }
        let Some(index) = existing else {
            if !self.unknown.contains(&key) {
                self.unknown.push(key);
            }
            return;
        };
        let flow = &mut self.flows[index];
        if segment.source == flow.client {
            flow.to_server.add(segment.sequence, segment.payload, when);
            if segment.fin || segment.rst {
                flow.to_server.closed.get_or_insert(when);
            }
        } else {
            if segment.syn {
                flow.accepted = true;
            }
            if segment.fin || segment.rst {
                flow.server_fin.get_or_insert(when);
            }
        }
    }

    fn finish(self) -> Result<Capture, CaptureError> {
        let mut skipped: Vec<String> = self
            .unknown
            .iter()
            .map(|(a, b)| {
                format!("{a} <-> {b}: already open when the capture started (no SYN), so it cannot be replayed")
            })
            .collect();
        let mut clients = Vec::new();
        for flow in self.flows {
            if !flow.accepted {
                skipped.push(format!(
                    "{} -> {}: the server never accepted the connection",
                    flow.client, flow.server
                ));
                continue;
            }
            if let Some(first) = clients.first().map(|client: &ClientFlow| client.server) {
                if first != flow.server {
                    return Err(CaptureError::SeveralServers(first, flow.server));
                }
            }
            let end = match (flow.to_server.closed, flow.server_fin) {
                (Some(client), Some(server)) if server < client => End::ServerClosed(server),
                (None, Some(server)) => End::ServerClosed(server),
                (Some(client), _) => End::ClientClosed(client),
                (None, None) => End::StillOpen,
            };
            clients.push(ClientFlow {
                peer: flow.client,
                server: flow.server,
                connected: flow.syn,
                sent: flow.to_server.into_frames(flow.client)?,
                end,
            });
        }
        if clients.is_empty() {
            return Err(CaptureError::NoConnections);
        }
        Ok(Capture { clients, skipped })
    }
}

/// The two addresses of a connection in a fixed order, so both directions
/// find the same entry.
fn ordered(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// One direction's byte stream, reassembled by sequence number.
struct Stream {
    /// Sequence number of the stream's first byte (the SYN's plus one).
    first_sequence: u32,
    /// The bytes received in order so far.
    data: Vec<u8>,
    /// Each time `data` grew: its new length, and the packet that did it.
    growth: Vec<(usize, Moment)>,
    /// Segments captured ahead of a hole, by stream offset.
    ahead: BTreeMap<usize, Vec<u8>>,
    closed: Option<Moment>,
}

impl Stream {
    fn starting_after(syn_sequence: u32) -> Stream {
        Stream {
            first_sequence: syn_sequence.wrapping_add(1),
            data: Vec::new(),
            growth: Vec::new(),
            ahead: BTreeMap::new(),
            closed: None,
        }
    }

    fn add(&mut self, sequence: u32, payload: &[u8], when: Moment) {
        // Offsets wrap with the 32-bit sequence space; a "negative" offset is
        // a retransmission from before the stream's start (of the SYN).
        let offset = sequence.wrapping_sub(self.first_sequence);
        let (offset, payload) = if offset > u32::MAX / 2 {
            let before = (offset.wrapping_neg()) as usize;
            (0, payload.get(before..).unwrap_or_default())
        } else {
            (offset as usize, payload)
        };
        if payload.is_empty() {
            return;
        }
        let longest = self.ahead.entry(offset).or_default();
        if payload.len() > longest.len() {
            *longest = payload.to_vec();
        }
        let before = self.data.len();
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.data.len() {
                break;
            }
            let (start, bytes) = entry.remove_entry();
            // Only what lies past the end is new; the rest was retransmitted.
            let new = (start + bytes.len()).saturating_sub(self.data.len());
            self.data.extend_from_slice(&bytes[bytes.len() - new..]);
        }
        if self.data.len() > before {
            self.growth.push((self.data.len(), when));
        }
    }

    /// When the first `len` bytes had all been captured.
    fn complete_at(&self, len: usize) -> Moment {
        let index = self.growth.partition_point(|(grown, _)| *grown < len);
        self.growth[index.min(self.growth.len() - 1)].1
    }

    /// Cuts the stream into frames, each dated by the packet that completed it.
    fn into_frames(self, peer: SocketAddr) -> Result<Vec<Sent>, CaptureError> {
        if !self.ahead.is_empty() {
            return Err(CaptureError::Gap {
                peer,
                offset: self.data.len(),
            });
        }
        let mut codec = FrameCodec::new(MAX_CLIENT_PAYLOAD);
        let mut buffer = BytesMut::from(&self.data[..]);
        let mut sent = Vec::new();
        let mut offset = 0;
        let piece = |start: usize, end: usize, when: Moment, kind| Sent {
            when,
            bytes: Bytes::copy_from_slice(&self.data[start..end]),
            kind,
        };
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let end = offset + frame.wire_len();
                    let when = self.complete_at(end);
                    sent.push(piece(offset, end, when, SentKind::Frame(frame.opcode)));
                    offset = end;
                }
                Ok(None) if buffer.is_empty() => break,
                Ok(None) => {
                    let when = self.complete_at(self.data.len());
                    sent.push(piece(offset, self.data.len(), when, SentKind::Unfinished));
                    break;
                }
                // Decoding fails only on a bad magic or length, never on I/O.
                Err(_) => {
                    // Dated by the header bytes that gave it away.
                    let telling = (offset + HEADER_LEN).min(self.data.len());
                    let when = self.complete_at(telling);
                    sent.push(piece(offset, self.data.len(), when, SentKind::Garbage));
                    break;
                }
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

    const CLIENT: ([u8; 4], u16) = ([127, 0, 0, 1], 50_000);
    const SERVER: ([u8; 4], u16) = ([127, 0, 0, 1], 4170);
    const CLIENT_ISN: u32 = 1000;
    const SERVER_ISN: u32 = 9000;

    #[derive(Clone, Copy)]
    enum From {
        Client,
        Server,
    }

    /// Builds a pcap of one connection from (milliseconds, sender, flags,
    /// sequence offset, payload) tuples.
    struct PcapBuilder {
        packets: Vec<(u64, Vec<u8>)>,
    }

    impl PcapBuilder {
        fn new() -> PcapBuilder {
            PcapBuilder {
                packets: Vec::new(),
            }
        }

        fn packet(&mut self, ms: u64, from: From, flags: &str, offset: u32, payload: &[u8]) {
            let (source, destination, isn) = match from {
                From::Client => (CLIENT, SERVER, CLIENT_ISN),
                From::Server => (SERVER, CLIENT, SERVER_ISN),
            };
            let sequence = if flags.contains('S') {
                isn
            } else {
                isn.wrapping_add(1).wrapping_add(offset)
            };
            let mut builder = PacketBuilder::ethernet2([0; 6], [0; 6])
                .ipv4(source.0, destination.0, 64)
                .tcp(source.1, destination.1, sequence, 65_535);
            if flags.contains('S') {
                builder = builder.syn();
            }
            if flags.contains('A') || matches!(from, From::Server) {
                builder = builder.ack(0);
            }
            if flags.contains('F') {
                builder = builder.fin();
            }
            if flags.contains('R') {
                builder = builder.rst();
            }
            let mut bytes = Vec::new();
            builder.write(&mut bytes, payload).unwrap();
            self.packets.push((ms, bytes));
        }

        fn handshake(&mut self) {
            self.packet(0, From::Client, "S", 0, b"");
            self.packet(0, From::Server, "SA", 0, b"");
        }

        fn build(&self) -> Vec<u8> {
            let mut writer = PcapWriter::with_header(Vec::new(), PcapHeader::default()).unwrap();
            for (ms, data) in &self.packets {
                let timestamp = Duration::from_millis(1_700_000_000_000 + ms);
                let packet = PcapPacket::new(timestamp, data.len() as u32, data);
                writer.write_packet(&packet).unwrap();
            }
            writer.into_writer()
        }
    }

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0x04, 0x17, opcode]);
        bytes.extend_from_slice(payload);
        bytes
    }

    fn sent_frames(capture: &Capture) -> Vec<(u64, Vec<u8>)> {
        capture.clients[0]
            .sent
            .iter()
            .map(|sent| (sent.when.at.as_millis() as u64, sent.bytes.to_vec()))
            .collect()
    }

    #[test]
    fn frames_split_merged_reordered_and_retransmitted_come_out_whole() {
        let nick = frame(0x0f, b"\x05alice");
        let list = frame(0x0c, b"");
        let join = frame(0x03, b"\x05lobby\x00");
        let stream = [nick.clone(), list.clone(), join.clone()].concat();
        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        // The NICK in two segments, the second of which also carries the
        // LIST; the JOIN's tail arrives before its head; then a
        // retransmission of everything.
        let cut = 3;
        let nick_end = nick.len() as u32;
        let list_end = nick_end + list.len() as u32;
        pcap.packet(10, From::Client, "A", 0, &stream[..cut]);
        pcap.packet(
            20,
            From::Client,
            "A",
            cut as u32,
            &stream[cut..list_end as usize],
        );
        pcap.packet(
            30,
            From::Client,
            "A",
            list_end + 4,
            &stream[list_end as usize + 4..],
        );
        pcap.packet(
            40,
            From::Client,
            "A",
            list_end,
            &stream[list_end as usize..][..4],
        );
        pcap.packet(50, From::Client, "A", 0, &stream);
        pcap.packet(60, From::Client, "AF", stream.len() as u32, b"");
        pcap.packet(60, From::Server, "AF", 0, b"");
        let capture = Capture::parse(&pcap.build()).unwrap();
        assert_eq!(
            sent_frames(&capture),
            [(20, nick), (20, list), (40, join)],
            "each frame is dated by the packet that completed it"
        );
        let client = &capture.clients[0];
        assert_eq!(client.peer, SocketAddr::from(CLIENT));
        assert_eq!(client.server, SocketAddr::from(SERVER));
        assert!(matches!(
            client.end,
            End::ClientClosed(Moment { packet: 7, .. })
        ));
    }

    #[test]
    fn the_side_that_closes_first_is_recorded() {
        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        pcap.packet(5, From::Client, "A", 0, &frame(0x06, b""));
        pcap.packet(6, From::Server, "AF", 0, b"");
        pcap.packet(6, From::Client, "AF", 7, b"");
        let capture = Capture::parse(&pcap.build()).unwrap();
        assert!(matches!(
            capture.clients[0].end,
            End::ServerClosed(Moment { packet: 3, .. })
        ));
    }

    #[test]
    fn garbage_and_an_unfinished_frame_are_kept_as_such() {
        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        let mut bytes = frame(0x0c, b"");
        bytes.extend_from_slice(&[0, 0, 0, 1, 0x04, 0x18, 0x06, 0]);
        pcap.packet(5, From::Client, "A", 0, &bytes);
        let capture = Capture::parse(&pcap.build()).unwrap();
        let kinds: Vec<SentKind> = capture.clients[0].sent.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SentKind::Frame(0x0c), SentKind::Garbage]);
        assert_eq!(capture.clients[0].end, End::StillOpen);

        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        pcap.packet(5, From::Client, "A", 0, &[0, 0, 0, 5, 0x04]);
        let capture = Capture::parse(&pcap.build()).unwrap();
        assert_eq!(capture.clients[0].sent[0].kind, SentKind::Unfinished);
    }

    #[test]
    fn refused_and_unknown_connections_are_skipped_with_a_reason() {
        let mut pcap = PcapBuilder::new();
        pcap.packet(0, From::Client, "S", 0, b"");
        pcap.packet(0, From::Server, "AR", 0, b"");
        let err = Capture::parse(&pcap.build()).unwrap_err();
        assert!(matches!(err, CaptureError::NoConnections), "{err}");

        let mut pcap = PcapBuilder::new();
        pcap.packet(0, From::Client, "A", 0, &frame(0x0c, b""));
        pcap.handshake();
        pcap.packet(0, From::Client, "S", 0, b"");
        let capture = Capture::parse(&pcap.build()).unwrap();
        assert_eq!(
            capture.clients.len(),
            1,
            "the retransmitted SYN is the same client"
        );
        assert_eq!(capture.skipped.len(), 1);
        assert!(
            capture.skipped[0].contains("no SYN"),
            "{:?}",
            capture.skipped
        );
    }

    #[test]
    fn a_hole_in_the_stream_is_an_error() {
        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        pcap.packet(5, From::Client, "A", 10, b"late bytes");
        let err = Capture::parse(&pcap.build()).unwrap_err();
        assert!(matches!(err, CaptureError::Gap { offset: 0, .. }), "{err}");
    }

    #[test]
    fn bad_files_are_named_for_what_they_are() {
        let err = Capture::parse(b"hello, this is text").unwrap_err();
        assert!(err.to_string().starts_with("not a pcap file"), "{err}");
        let err = Capture::parse(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0]).unwrap_err();
        assert!(matches!(err, CaptureError::PcapNg), "{err}");
        let mut pcap = PcapBuilder::new();
        pcap.handshake();
        let mut bytes = pcap.build();
        bytes.truncate(bytes.len() - 3);
        let err = Capture::parse(&bytes).unwrap_err();
        assert!(
            matches!(err, CaptureError::BadPacket { index: 1, .. }),
            "{err}"
        );
    }
}
