//! The pod proxy subresource (`GET /api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/<path>`),
//! as `kubectl get --raw` and the plugin use it: the server looks up the pod's IP and
//! forwards the request to `<podIP>:<port>`, answering with the pod's status and body.
//! Only GET, and only to loopback addresses: the fake's pods are processes on this machine.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::error::ApiError;
use super::http::Body;
use super::resource::Resource;
use super::store::{lock, Store};

/// Longest exchange with a pod, and the largest answer relayed.
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: usize = 16 << 20;

/// `<pod>` or `<pod>:<port>` of the URL: the name and the port (default 80, as upstream).
pub(crate) fn name_and_port(segment: &str) -> Result<(String, u16), ApiError> {
    match segment.split_once(':') {
        None => Ok((segment.to_owned(), 80)),
        Some((name, port)) => port
            .parse()
            .map(|p| (name.to_owned(), p))
            .map_err(|_| ApiError::bad_request(format!("invalid port in {segment:?}"))),
    }
}

pub(crate) async fn forward(
    store: &Mutex<Store>,
    namespace: &str,
    name: &str,
    port: u16,
    path_and_query: &str,
) -> Result<Response<Body>, ApiError> {
    let pod = lock(store)
        .get(Resource::Pods, namespace, name)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    let ip: IpAddr = pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ApiError::service_unavailable(format!("pod {namespace}/{name} has no IP address"))
        })?;
    if !ip.is_loopback() {
        return Err(ApiError::service_unavailable(format!(
            "the fake API server proxies only to loopback, not to {ip}"
        )));
    }
    let exchange = async {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::service_unavailable(format!("error trying to reach service: {e}"))
        };
        let stream = TcpStream::connect((ip, port))
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let request = Request::get(path_and_query)
            .header(HOST, format!("{ip}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok::<_, ApiError>((status, content_type, body))
    };
    let (status, content_type, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ApiError::service_unavailable("the pod did not answer in time"))??;
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("text/plain")),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_segment() {
        assert_eq!(
            name_and_port("agent-x:9610").expect("ok"),
            ("agent-x".into(), 9610)
        );
        assert_eq!(
            name_and_port("agent-x").expect("ok"),
            ("agent-x".into(), 80)
        );
        assert!(name_and_port("agent-x:http").is_err());
    }
}
