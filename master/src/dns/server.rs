//! The network edge of the zone: hickory-server listeners and the request
//! handler that turns a decoded message into [`answer`]'s response.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto as dns_wire;

use dns_wire::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use dns_wire::rr::{DNSClass, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::{Answer, DnsConfig, DnsError, Records, ZoneSettings, answer};

/// Largest UDP answer sent even if the client's EDNS allows more: the size
/// that avoids IP fragmentation on common paths (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// A TCP connection that sends no complete query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers queued per TCP connection before the handler waits for the client.
const TCP_RESPONSE_BUFFER: usize = 16;

/// Serves the zone on UDP and TCP at every `cfg.listen` address until
/// `shutdown` resolves; the returned task ends once every listener is
/// closed. All sockets are bound before anything is served, so a bad address
/// is an error here rather than a dead task. With no listen address nothing
/// is served and the task ends at once.
pub async fn serve(
    cfg: DnsConfig,
    records: Arc<Records>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<()>, DnsError> {
    cfg.check()?;
    if cfg.listen.is_empty() {
        return Ok(tokio::spawn(async {}));
    }
    let mut sockets = Vec::with_capacity(cfg.listen.len());
    for &addr in &cfg.listen {
        let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let tcp = TcpListener::bind(addr).await.map_err(|source| DnsError::Bind {
            proto: "tcp",
            addr,
            source,
        })?;
        sockets.push((udp, tcp));
    }
    let listen = cfg.listen.clone();
    let mut server = Server::new(Handler {
        cfg: Arc::new(cfg),
        records,
    });
    for (udp, tcp) in sockets {
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    tracing::info!(?listen, "dns: serving the internal zone");
    let stop = server.shutdown_token().clone();
    Ok(tokio::spawn(async move {
        let done = server.block_until_done();
        tokio::pin!(done, shutdown);
        let result = tokio::select! {
            result = &mut done => result,
            () = &mut shutdown => {
                stop.cancel();
                done.await
            }
        };
        match result {
            Ok(()) => tracing::info!(?listen, "dns: stopped"),
            Err(e) => tracing::error!(?listen, error = %e, "dns: a listener failed"),
        }
    }))
}

/// Checks the shape of each request and answers it from the current snapshot.
struct Handler {
    cfg: Arc<DnsConfig>,
    records: Arc<Records>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours.set_version(0);
            ours
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let outcome = self.decide(request);
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let sent = match &outcome {
            Err(rcode) => {
                metadata.response_code = *rcode;
                response.send_response(builder.build_no_records(metadata)).await
            }
            Ok(ans) => {
                metadata.response_code = ans.rcode;
                metadata.authoritative = ans.authoritative;
                let none: &[Record] = &[];
                let message = builder.build(metadata, &ans.answers, &ans.authority, none, &ans.additional);
                response.send_response(message).await
            }
        };
        crate::metrics::dns_query(rcode_name(metadata.response_code));
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(src = %request.src(), error = %e, "dns: cannot send the answer");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The usual mnemonic of a response code, for the query counter.
fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

impl Handler {
    /// The answer, or the response code for a request of the wrong shape.
    fn decide(&self, request: &Request) -> Result<Answer, ResponseCode> {
        if request.metadata.op_code != OpCode::Query {
            return Err(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Err(ResponseCode::BADVERS);
        }
        let [query] = request.queries.queries() else {
            // RFC 9619: exactly one question.
            return Err(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return Err(ResponseCode::Refused);
        }
        let q_name = query.original().name().to_string();
        let set = self.records.snapshot();
        Ok(answer(&q_name, query.query_type(), &self.cfg, &set))
    }
}
