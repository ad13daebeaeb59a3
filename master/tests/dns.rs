//! The built-in DNS server on 127.0.0.1, asked by real clients: `dig` for
//! the answers, raw UDP and TCP sockets for malformed and abusive traffic.
//! Needs `dig` (Debian: bind9-dnsutils).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_master::dns::{DnsConfig, DnsError, Records, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ZONE: &str = "svc.mcp.metacircular.net";

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

fn name(label: &str) -> String {
    format!("{label}.{ZONE}")
}

/// A port free for both UDP and TCP on 127.0.0.1 (the server binds both).
async fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let port = udp.local_addr().expect("udp address").port();
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
    panic!("no port free for both udp and tcp on 127.0.0.1");
}

/// A running server on 127.0.0.1:<port>, stopped on `stop` (or when dropped).
struct Dns {
    port: u16,
    records: Arc<Records>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Dns {
    async fn start() -> Dns {
        Dns::start_with(DnsConfig {
            ns_addresses: vec![Ipv4Addr::LOCALHOST],
            ..DnsConfig::default()
        })
        .await
    }

    async fn start_with(mut cfg: DnsConfig) -> Dns {
        let records = Arc::new(Records::with_serial(1));
        // Another test's client socket may take the port between probe and bind: retry.
        for _ in 0..20 {
            let port = free_port().await;
            cfg.listen = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
            let (stop, stopped) = oneshot::channel::<()>();
            let started = serve(cfg.clone(), records.clone(), async {
                let _ = stopped.await;
            })
            .await;
            match started {
                Ok(task) => {
                    return Dns {
                        port,
                        records,
                        stop: Some(stop),
                        task: Some(task),
                    };
                }
                Err(DnsError::Bind { .. }) => continue,
                Err(e) => panic!("dns server does not start: {e}"),
            }
        }
        panic!("dns server does not start: no free port");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Asks `dig` (no recursion wanted, one try) and parses its answer.
    async fn dig(&self, args: &[&str]) -> Dig {
        let port = self.port.to_string();
        let mut cmd = tokio::process::Command::new("dig");
        cmd.args(["@127.0.0.1", "-p", &port, "+norecurse", "+time=3", "+tries=1"]);
        cmd.args(args);
        let out = cmd
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run dig (Debian: apt-get install bind9-dnsutils): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "dig {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Dig::parse(&text)
    }

    /// Asserts that the server still answers an ordinary query over UDP and TCP.
    async fn assert_serving(&self) {
        self.records.set(&name("alive"), vec![ip(42)]).expect("valid name");
        for transport in ["+notcp", "+tcp"] {
            let d = self.dig(&[transport, &name("alive"), "A"]).await;
            assert_eq!(d.status, "NOERROR", "{transport}: {}", d.text);
            assert_eq!(
                d.answer,
                vec![format!("{}. 60 IN A 10.0.0.42", name("alive"))],
                "{}",
                d.text
            );
        }
    }

    /// Stops the server and waits until every listener is closed.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("dns server stops within 5 s")
                .expect("dns task does not panic");
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What `dig` printed, by section; record lines with single spaces.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: BTreeSet<String>,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
    size: usize,
    text: String,
}

impl Dig {
    fn parse(text: &str) -> Dig {
        let mut d = Dig {
            text: text.to_string(),
            ..Dig::default()
        };
        let mut section = "";
        for line in text.lines() {
            if let Some(rest) = line.split("status: ").nth(1) {
                d.status = rest.split(',').next().unwrap_or_default().to_string();
            } else if let Some(rest) = line.strip_prefix(";; flags: ") {
                let flags = rest.split(';').next().unwrap_or_default();
                d.flags = flags.split_whitespace().map(str::to_string).collect();
            } else if let Some(rest) = line.strip_prefix(";; MSG SIZE  rcvd: ") {
                d.size = rest.trim().parse().unwrap_or_default();
            } else if line.starts_with(";; ANSWER SECTION") {
                section = "answer";
            } else if line.starts_with(";; AUTHORITY SECTION") {
                section = "authority";
            } else if line.starts_with(";; ADDITIONAL SECTION") {
                section = "additional";
            } else if line.trim().is_empty() || line.starts_with(';') {
                section = "";
            } else {
                let record = line.split_whitespace().collect::<Vec<_>>().join(" ");
                match section {
                    "answer" => d.answer.push(record),
                    "authority" => d.authority.push(record),
                    "additional" => d.additional.push(record),
                    _ => {}
                }
            }
        }
        d
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }
}

fn soa_line(serial: u32) -> String {
    format!("{ZONE}. 60 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. {serial} 3600 600 1209600 60")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_follow_set_and_remove() {
    let dns = Dns::start().await;
    let web = name("web");

    dns.records.set(&web, vec![ip(2), ip(1)]).expect("valid name");
    let d = dns.dig(&[&web, "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.has("aa") && d.has("qr"), "{}", d.text);
    assert!(!d.has("ra"), "never offers recursion: {}", d.text);
    assert_eq!(
        d.answer,
        vec![format!("{web}. 60 IN A 10.0.0.1"), format!("{web}. 60 IN A 10.0.0.2")]
    );

    // A change is visible at once, with the next serial.
    dns.records.set(&web, vec![ip(3)]).expect("valid name");
    let d = dns.dig(&[&web, "A"]).await;
    assert_eq!(d.answer, vec![format!("{web}. 60 IN A 10.0.0.3")], "{}", d.text);

    // NODATA: the name exists without AAAA.
    let d = dns.dig(&[&web, "AAAA"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.has("aa"), "{}", d.text);
    assert!(d.answer.is_empty(), "{}", d.text);
    assert_eq!(d.authority, vec![soa_line(3)]);

    assert!(dns.records.remove(&web));
    let d = dns.dig(&[&web, "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.has("aa") && !d.has("ra"), "{}", d.text);
    assert!(d.answer.is_empty(), "{}", d.text);
    assert_eq!(d.authority, vec![soa_line(4)], "{}", d.text);

    let d = dns.dig(&[&name("never-was"), "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_has_soa_and_ns_with_glue() {
    let dns = Dns::start().await;
    let d = dns.dig(&[ZONE, "SOA"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.has("aa"), "{}", d.text);
    assert_eq!(d.answer, vec![soa_line(1)], "{}", d.text);

    let d = dns.dig(&[ZONE, "NS"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.answer, vec![format!("{ZONE}. 60 IN NS ns1.{ZONE}.")], "{}", d.text);
    assert_eq!(
        d.additional,
        vec![format!("ns1.{ZONE}. 60 IN A 127.0.0.1")],
        "{}",
        d.text
    );

    let d = dns.dig(&[&format!("ns1.{ZONE}"), "A"]).await;
    assert_eq!(d.answer, vec![format!("ns1.{ZONE}. 60 IN A 127.0.0.1")], "{}", d.text);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_names_outside_the_zone_without_recursing() {
    let dns = Dns::start().await;
    dns.records.set(&name("web"), vec![ip(1)]).expect("valid name");
    for (q, t) in [
        ("example.com", "A"),
        ("metacircular.net", "SOA"),
        ("mcp.metacircular.net", "NS"),
        ("xsvc.mcp.metacircular.net", "A"),
        (".", "NS"),
    ] {
        // Even when the client asks for recursion.
        let d = dns.dig(&["+recurse", q, t]).await;
        assert_eq!(d.status, "REFUSED", "{q}: {}", d.text);
        assert!(!d.has("ra"), "{q}: {}", d.text);
        assert!(!d.has("aa"), "{q}: {}", d.text);
        assert!(d.answer.is_empty() && d.authority.is_empty(), "{q}: {}", d.text);
    }
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive() {
    let dns = Dns::start().await;
    dns.records
        .set("Web.SVC.mcp.metacircular.net.", vec![ip(1)])
        .expect("valid name");
    for q in [
        "web.svc.mcp.metacircular.net",
        "WEB.SVC.MCP.METACIRCULAR.NET",
        "wEb.Svc.Mcp.MetaCircular.nEt.",
    ] {
        let d = dns.dig(&[q, "A"]).await;
        assert_eq!(d.status, "NOERROR", "{q}: {}", d.text);
        assert_eq!(d.answer.len(), 1, "{q}: {}", d.text);
        let owner = q.strip_suffix('.').unwrap_or(q);
        assert_eq!(
            d.answer[0],
            format!("{owner}. 60 IN A 10.0.0.1"),
            "the owner is spelled as asked"
        );
    }
    let d = dns.dig(&["SVC.MCP.metacircular.NET", "SOA"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.answer.len(), 1, "{}", d.text);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_tcp() {
    let dns = Dns::start().await;
    dns.records.set(&name("web"), vec![ip(1)]).expect("valid name");
    let d = dns.dig(&["+tcp", &name("web"), "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.answer, vec![format!("{}. 60 IN A 10.0.0.1", name("web"))]);
    let d = dns.dig(&["+tcp", &name("nope"), "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    let d = dns.dig(&["+tcp", "example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED", "{}", d.text);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answers_respect_the_size_limit() {
    let dns = Dns::start().await;
    let big = name("big");
    let addrs: Vec<Ipv4Addr> = (1..=60).map(ip).collect();
    dns.records.set(&big, addrs).expect("valid name");

    // No EDNS: 512 bytes at most, truncated with TC.
    let d = dns.dig(&["+noedns", "+ignore", &big, "A"]).await;
    assert!(d.has("tc"), "{}", d.text);
    assert!(d.size <= 512, "{} bytes: {}", d.size, d.text);
    assert!(d.answer.len() < 60, "{}", d.text);

    // EDNS with a small buffer: that buffer is the limit.
    let d = dns.dig(&["+bufsize=700", "+ignore", &big, "A"]).await;
    assert!(d.has("tc"), "{}", d.text);
    assert!(d.size <= 700, "{} bytes: {}", d.size, d.text);

    // EDNS with room for the whole answer (about 1 KB): complete, no TC.
    let d = dns.dig(&["+bufsize=1232", &big, "A"]).await;
    assert!(!d.has("tc"), "{}", d.text);
    assert_eq!(d.answer.len(), 60, "{}", d.text);

    // A client that sees TC retries over TCP and gets everything.
    let d = dns.dig(&["+noedns", &big, "A"]).await;
    assert!(!d.has("tc"), "{}", d.text);
    assert_eq!(d.answer.len(), 60, "{}", d.text);
    dns.stop().await;
}

/// A query in wire form: header, then one question per name.
fn query(id: u16, flags: u16, questions: &[(&str, u16, u16)]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.extend(flags.to_be_bytes());
    m.extend((questions.len() as u16).to_be_bytes());
    m.extend([0, 0, 0, 0, 0, 0]);
    for (name, qtype, class) in questions {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend(class.to_be_bytes());
    }
    m
}

/// Appends an EDNS OPT record with `version` and bumps ARCOUNT.
fn with_edns(mut m: Vec<u8>, version: u8) -> Vec<u8> {
    m[11] += 1;
    m.extend([0, 0, 41, 0x04, 0xd0, 0, version, 0, 0, 0, 0]);
    m
}

const A: u16 = 1;
const IN: u16 = 1;
const CH: u16 = 3;
const RD: u16 = 0x0100;

/// Sends one datagram and waits briefly for an answer.
async fn udp_exchange(server: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    sock.send_to(msg, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// ID, QR flag and RCODE of an answer.
fn header_of(answer: &[u8]) -> (u16, bool, u8) {
    assert!(answer.len() >= 12, "short answer: {answer:?}");
    (
        u16::from_be_bytes([answer[0], answer[1]]),
        answer[2] & 0x80 != 0,
        answer[3] & 0x0f,
    )
}

/// A deterministic byte source for garbage.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_udp_does_not_stop_the_server() {
    let dns = Dns::start().await;
    let server = dns.addr();
    let web = name("web");
    dns.records.set(&web, vec![ip(1)]).expect("valid name");

    // Too short for a header: dropped without an answer.
    for len in [0, 1, 11] {
        assert_eq!(udp_exchange(server, &vec![0xab; len]).await, None, "{len} bytes");
    }

    // Readable header, broken body: FORMERR with the same ID.
    let mut cut = query(0x1001, RD, &[(&web, A, IN)]);
    cut.truncate(20);
    let answer = udp_exchange(server, &cut).await.expect("an answer to a cut question");
    assert_eq!(header_of(&answer), (0x1001, true, 1));

    // No question, two questions: FORMERR.
    let answer = udp_exchange(server, &query(0x1002, 0, &[])).await.expect("an answer");
    assert_eq!(header_of(&answer), (0x1002, true, 1));
    let two = query(0x1003, 0, &[(&web, A, IN), (&web, A, IN)]);
    let answer = udp_exchange(server, &two).await.expect("an answer");
    assert_eq!(header_of(&answer), (0x1003, true, 1));

    // Another opcode (UPDATE): NOTIMP. Another class: REFUSED. EDNS version 1: BADVERS.
    let answer = udp_exchange(server, &query(0x1004, 5 << 11, &[(ZONE, 6, IN)]))
        .await
        .expect("an answer");
    assert_eq!(header_of(&answer), (0x1004, true, 4));
    let answer = udp_exchange(server, &query(0x1005, 0, &[("version.bind", 16, CH)]))
        .await
        .expect("an answer");
    assert_eq!(header_of(&answer), (0x1005, true, 5));
    let answer = udp_exchange(server, &with_edns(query(0x1006, 0, &[(&web, A, IN)]), 1))
        .await
        .expect("an answer");
    assert_eq!(header_of(&answer).0, 0x1006);
    // BADVERS is 16: low bits 0 in the header, the high bits in the OPT record.
    assert_eq!(header_of(&answer).2, 0);
    assert!(
        answer.windows(3).any(|w| w == [0, 41, 0x04]),
        "an OPT record carries BADVERS"
    );

    // A message that is a response is not answered (no reflection).
    assert_eq!(
        udp_exchange(server, &query(0x1007, 0x8000, &[(&web, A, IN)])).await,
        None
    );

    // Garbage and an oversized datagram: whatever the answer, the server goes on.
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    for i in 0..300 {
        let len = 12 + (i * 37) % 600;
        sock.send_to(&noise.bytes(len), server).await.expect("send garbage");
    }
    let mut huge = query(0x1008, 0, &[(&web, A, IN)]);
    huge.extend(noise.bytes(60_000));
    sock.send_to(&huge, server).await.expect("send an oversized datagram");

    // The well-formed query still gets its answer (retried like any UDP
    // resolver does: the garbage may still be queued on a loaded machine).
    let mut answer = None;
    for _ in 0..6 {
        answer = udp_exchange(server, &query(0x1009, 0, &[(&web, A, IN)])).await;
        if answer.is_some() {
            break;
        }
    }
    let answer = answer.expect("an answer");
    assert_eq!(header_of(&answer), (0x1009, true, 0));
    dns.assert_serving().await;
    dns.stop().await;
}

/// Writes `msg` with its TCP length prefix and reads one framed answer.
async fn tcp_exchange(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend(msg);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_tcp_does_not_stop_the_server() {
    let dns = Dns::start().await;
    let server = dns.addr();
    let web = name("web");
    dns.records.set(&web, vec![ip(1)]).expect("valid name");
    let mut noise = Noise(42);

    // A 65 KB query (the largest TCP frame): a valid question followed by junk.
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let mut big = query(0x2001, 0, &[(&web, A, IN)]);
    big[11] = 200; // ARCOUNT: the junk claims to be records.
    big.extend(noise.bytes(65_535 - big.len()));
    let mut framed = vec![0xff, 0xff];
    framed.extend(&big);
    stream.write_all(&framed).await.expect("send 65 KB");
    let mut len = [0u8; 2];
    match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len)).await {
        Ok(Ok(_)) => {
            let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut answer).await.expect("read the answer");
            assert_eq!(header_of(&answer), (0x2001, true, 1), "FORMERR for the junk");
        }
        Ok(Err(e)) => assert!(
            matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset),
            "{e}"
        ),
        Err(_) => panic!("no answer and no close within 5 s"),
    }
    drop(stream);

    // A frame cut short, garbage frames, and a half-sent frame left idle.
    let mut cut = TcpStream::connect(server).await.expect("connect");
    cut.write_all(&[0x01, 0x00, 1, 2, 3]).await.expect("send");
    drop(cut);
    for i in 0..20 {
        let mut s = TcpStream::connect(server).await.expect("connect");
        let len = 2 + (i * 53) % 400;
        let _ = s.write_all(&noise.bytes(len)).await;
    }
    let mut idle = TcpStream::connect(server).await.expect("connect");
    idle.write_all(&[0x00, 0x40, 0xde, 0xad]).await.expect("send");

    // Many idle connections at once.
    let mut crowd = Vec::new();
    for _ in 0..100 {
        crowd.push(TcpStream::connect(server).await.expect("connect"));
    }

    // Others are still served meanwhile, several queries on one connection too.
    let mut stream = TcpStream::connect(server).await.expect("connect");
    for id in 0..5u16 {
        let answer = tcp_exchange(&mut stream, &query(0x3000 + id, 0, &[(&web, A, IN)]))
            .await
            .expect("tcp exchange");
        assert_eq!(header_of(&answer), (0x3000 + id, true, 0));
    }
    dns.assert_serving().await;

    // The idle connection is closed by the server's timeout (10 s).
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed within 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(crowd);
    dns.assert_serving().await;
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_is_fully_answered() {
    const UDP_CLIENTS: usize = 8;
    const UDP_QUERIES: usize = 250;
    const TCP_CLIENTS: usize = 8;
    const TCP_QUERIES: usize = 100;
    let dns = Dns::start().await;
    let server = dns.addr();
    for i in 0..50u8 {
        dns.records
            .set(&name(&format!("svc{i}")), vec![ip(i)])
            .expect("valid name");
    }

    let mut clients = Vec::new();
    for c in 0..UDP_CLIENTS {
        clients.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
            let mut buf = vec![0u8; 2048];
            let mut answered = 0;
            for q in 0..UDP_QUERIES {
                let id = (c * UDP_QUERIES + q) as u16;
                let i = (c + q) % 60; // 50 known names, 10 unknown
                let msg = query(id, 0, &[(&name(&format!("svc{i}")), A, IN)]);
                sock.send_to(&msg, server).await.expect("send");
                let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
                    .await
                    .expect("an answer within 2 s")
                    .expect("recv");
                let expected = if i < 50 { 0 } else { 3 };
                assert_eq!(header_of(&buf[..n]), (id, true, expected));
                answered += 1;
            }
            answered
        }));
    }
    for c in 0..TCP_CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(server).await.expect("connect");
            for q in 0..TCP_QUERIES {
                let id = (c * TCP_QUERIES + q) as u16;
                let msg = query(id, 0, &[(&name(&format!("svc{}", q % 50)), A, IN)]);
                let answer = tokio::time::timeout(Duration::from_secs(2), tcp_exchange(&mut stream, &msg))
                    .await
                    .expect("an answer within 2 s")
                    .expect("tcp exchange");
                assert_eq!(header_of(&answer), (id, true, 0));
            }
            TCP_QUERIES
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.expect("client task");
    }
    assert_eq!(total, UDP_CLIENTS * UDP_QUERIES + TCP_CLIENTS * TCP_QUERIES);
    dns.assert_serving().await;
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_listener() {
    let dns = Dns::start().await;
    dns.assert_serving().await;
    let port = dns.port;
    dns.stop().await;
    // Both ports are free again.
    UdpSocket::bind(("127.0.0.1", port)).await.expect("udp port released");
    TcpListener::bind(("127.0.0.1", port)).await.expect("tcp port released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_problems_are_errors_before_serving() {
    // Nothing configured: nothing served, the task ends at once.
    let task = serve(DnsConfig::default(), Arc::new(Records::new()), std::future::pending())
        .await
        .expect("off is fine");
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("ends at once")
        .expect("no panic");

    // A port already taken.
    let holder = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let taken = holder.local_addr().expect("address");
    let cfg = DnsConfig {
        listen: vec![taken],
        ..DnsConfig::default()
    };
    let err = serve(cfg, Arc::new(Records::new()), std::future::pending())
        .await
        .expect_err("address in use");
    assert!(matches!(err, DnsError::Bind { proto: "udp", .. }), "{err}");
    assert!(err.to_string().contains(&taken.to_string()), "{err}");

    // Invalid settings are refused before binding anything.
    let cfg = DnsConfig {
        listen: vec!["127.0.0.1:0".parse().expect("address")],
        zone: "bad zone".into(),
        ..DnsConfig::default()
    };
    let err = serve(cfg, Arc::new(Records::new()), std::future::pending())
        .await
        .expect_err("invalid settings");
    assert!(matches!(err, DnsError::Config(_)), "{err}");
}
