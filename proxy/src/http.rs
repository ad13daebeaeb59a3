//! The L7 request path: route by `Host`, rewrite headers, forward, stream
//! the answer back. Header rewriting is pure and unit-tested.

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use crate::io::Activity;
use crate::shared::Shared;
use crate::{Mode, ProxyRoute};

/// What the proxy answers with: the backend's body, or its own short one.
pub(crate) type Body = Either<Incoming, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// One terminated TLS connection: where it came from and which
/// certificate it was served, for routing each request on it.
pub(crate) struct L7Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) port: u16,
    pub(crate) cert: PathBuf,
    pub(crate) peer: IpAddr,
    pub(crate) activity: Arc<Activity>,
    /// Held while any part of the connection lives (including an upgraded
    /// stream), so the listener's connection bound counts it.
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

/// Serves one request of an L7 connection, counting it by route and status.
pub(crate) async fn handle(conn: Arc<L7Conn>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut route = String::new();
    let shared = conn.shared.clone();
    let resp = forward(conn, req, &mut route).await;
    if let Ok(r) = &resp {
        shared.config.observer.request(&route, r.status().as_u16());
    }
    resp
}

/// Routes and forwards one request; `route_name` gets the matched route's hostname.
async fn forward(
    conn: Arc<L7Conn>,
    mut req: Request<Incoming>,
    route_name: &mut String,
) -> Result<Response<Body>, Infallible> {
    let Some(authority) = request_authority(&req) else {
        return Ok(local(StatusCode::BAD_REQUEST, "missing host\n"));
    };
    let host = host_only(&authority);
    let route = conn
        .shared
        .table()
        .get(conn.port, &host)
        .filter(|r| serves(r, &conn.cert));
    let Some(route) = route else {
        tracing::debug!(
            port = conn.port,
            host,
            "no l7 route for host on this connection's certificate"
        );
        return Ok(local(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n"));
    };
    route_name.clone_from(&route.hostname);
    let upgrade = wants_upgrade(req.headers(), req.version());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    forward_headers(&mut parts.headers, &authority, conn.peer, upgrade);
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = match conn
        .shared
        .upstream
        .send(
            &route.backend,
            route.backend_tls,
            route.backend_name.as_deref(),
            upstream_req,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(service = %route.service, host = %route.hostname, error = %e, "backend unavailable");
            return Ok(local(StatusCode::BAD_GATEWAY, "bad gateway\n"));
        }
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_response_headers(resp.headers_mut(), switched && upgrade);
    if switched {
        match client_upgrade {
            Some(client) => {
                let backend = hyper::upgrade::on(&mut resp);
                tokio::spawn(splice_upgrade(conn.clone(), client, backend));
            }
            None => return Ok(local(StatusCode::BAD_GATEWAY, "bad gateway\n")),
        }
    }
    Ok(resp.map(Either::Left))
}

/// Both halves of an upgraded (e.g. WebSocket) exchange, spliced until one
/// side closes or the connection idles out.
async fn splice_upgrade(conn: Arc<L7Conn>, client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let idle = conn.shared.config.idle_timeout;
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
        _ = conn.activity.idle(idle) => tracing::debug!("upgraded connection idle; closing"),
    }
}

/// Whether `route` may answer on a connection that was served `cert`: an
/// L7 route with that very certificate (h2 clients reuse a connection for
/// every name its certificate covers).
fn serves(route: &ProxyRoute, cert: &std::path::Path) -> bool {
    route.mode == Mode::L7 && route.cert.as_deref() == Some(cert)
}

/// The authority the client asked for: h2 `:authority`, else `Host`.
fn request_authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    let h = req.headers().get(HOST)?.to_str().ok()?;
    (!h.is_empty()).then(|| h.to_string())
}

/// The lower-case host of an authority (`host[:port]`, `[v6][:port]`).
pub(crate) fn host_only(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn wants_upgrade(headers: &HeaderMap, version: http::Version) -> bool {
    version == http::Version::HTTP_11 && headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP.iter().copied()) {
        headers.remove(name);
    }
}

/// The request headers the backend gets: hop-by-hop removed (the upgrade
/// handshake and `TE: trailers` survive), `Host` as the client sent it,
/// the client appended to `X-Forwarded-For`, `X-Forwarded-Proto: https`.
pub(crate) fn forward_headers(headers: &mut HeaderMap, authority: &str, peer: IpAddr, upgrade: bool) {
    let upgrade_to = headers.get(UPGRADE).cloned();
    let te_trailers = headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(proto) = upgrade_to {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, proto);
    }
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert(HOST, v);
    }
    let prior: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let mut xff = prior.join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer.to_canonical().to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
}

/// The response headers the client gets: hop-by-hop removed, except the
/// upgrade handshake of a 101 to an upgrade request.
fn strip_response_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade_to = headers.get(UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if keep_upgrade && let Some(proto) = upgrade_to {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, proto);
    }
}

/// A response the proxy makes itself.
fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn flat(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect();
        v.sort();
        v
    }

    fn check(input: &[(&str, &str)], authority: &str, peer: &str, upgrade: bool, expected: &[(&str, &str)]) {
        let mut h = headers(input);
        forward_headers(&mut h, authority, peer.parse().expect("ip"), upgrade);
        assert_eq!(flat(&h), flat(&headers(expected)), "{input:?}");
    }

    #[test]
    fn request_headers_are_rewritten() {
        check(
            &[("accept", "*/*")],
            "web.example.net",
            "192.0.2.7",
            false,
            &[
                ("accept", "*/*"),
                ("host", "web.example.net"),
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-proto", "https"),
            ],
        );
        check(
            &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "198.51.100.2"),
                ("x-forwarded-proto", "http"),
                ("host", "web.example.net:8443"),
            ],
            "web.example.net:8443",
            "::ffff:192.0.2.7",
            false,
            &[
                ("host", "web.example.net:8443"),
                ("x-forwarded-for", "203.0.113.1, 198.51.100.2, 192.0.2.7"),
                ("x-forwarded-proto", "https"),
            ],
        );
        check(
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers, deflate"),
                ("transfer-encoding", "chunked"),
                ("proxy-authorization", "Basic x"),
                ("upgrade", "websocket"),
            ],
            "web.example.net",
            "2001:db8::1",
            false,
            &[
                ("host", "web.example.net"),
                ("te", "trailers"),
                ("x-forwarded-for", "2001:db8::1"),
                ("x-forwarded-proto", "https"),
            ],
        );
        check(
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            "web.example.net",
            "192.0.2.7",
            true,
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("host", "web.example.net"),
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-proto", "https"),
            ],
        );
    }

    #[test]
    fn hosts_are_normalized() {
        let cases = [
            ("web.example.net", "web.example.net"),
            ("Web.Example.NET:8443", "web.example.net"),
            ("web.example.net.", "web.example.net"),
            ("[::1]:443", "::1"),
            ("[::1]", "::1"),
        ];
        for (input, expected) in cases {
            assert_eq!(host_only(input), expected, "{input}");
        }
    }
}
