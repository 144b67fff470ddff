//! Control-plane RPC spans and W3C trace context (`traceparent`, `tracestate`) in gRPC
//! metadata, so that one operator action is one trace: CLI -> FleetControl -> one child
//! per node -> NodeControl.
//!
//! [`RpcTraceLayer`] is a tower layer over the whole tonic server (`serve_grpc`): each
//! request gets a server span named `{service}/{method}` whose parent is the
//! `traceparent` of the request's metadata (grpcurl's `-H traceparent:...` included),
//! and the handler runs with that span's context current. The span covers the handler,
//! not a streamed response body, so no span lasts as long as a `WatchStats` stream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(k, v);
        }
    }
}

/// The trace context a request's headers carry (an empty context without one).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Puts `cx`'s span context into `metadata` (nothing when it has no valid span).
pub fn inject(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut Metadata(metadata));
    }
}

/// A request carrying the current trace context.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    Context::map_current(|cx| inject(cx, r.metadata_mut()));
    r
}

/// Server spans for every request of a tonic server; without a tracer it passes
/// requests through untouched.
#[derive(Debug, Clone, Default)]
pub struct RpcTraceLayer {
    tracer: Option<SdkTracer>,
}

impl RpcTraceLayer {
    pub fn new(tracer: Option<SdkTracer>) -> RpcTraceLayer {
        RpcTraceLayer { tracer }
    }
}

impl<S> tower_layer::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace { inner, tracer: self.tracer.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
    tracer: Option<SdkTracer>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for RpcTrace<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(tracer) = &self.tracer else { return Box::pin(self.inner.call(req)) };
        let parent = extract(req.headers());
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let peer: Option<SocketAddr> = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|t| t.get_ref().remote_addr())
            .or_else(|| req.extensions().get::<TcpConnectInfo>().and_then(|t| t.remote_addr()));
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
        ];
        if let Some(p) = peer {
            attributes.push(KeyValue::new("network.peer.address", p.ip().to_string()));
            attributes.push(KeyValue::new("network.peer.port", i64::from(p.port())));
        }
        let span = tracer
            .span_builder(path.to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        let fut = {
            let _current = cx.clone().attach();
            self.inner.call(req)
        };
        Box::pin(async move {
            let response = fut.with_context(cx.clone()).await;
            let span = cx.span();
            if let Ok(r) = &response {
                // A unary error is a trailers-only response: grpc-status is in the headers.
                let code = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                if code != 0 {
                    let msg = r.headers().get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    span.set_status(Status::error(format!("grpc-status {code}: {}", truncate(msg, 200))));
                }
            }
            span.end();
            response
        })
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_metadata() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("value"));
        let cx = extract(&h);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut m = tonic::metadata::MetadataMap::new();
        inject(&cx, &mut m);
        assert_eq!(m.get("traceparent").and_then(|v| v.to_str().ok()), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let mut empty = tonic::metadata::MetadataMap::new();
        inject(&Context::new(), &mut empty);
        assert!(empty.is_empty());
    }
}
