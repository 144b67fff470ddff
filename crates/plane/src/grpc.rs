//! Serving tonic services with `grpc.health.v1.Health` and server reflection in both `v1`
//! and `v1alpha` (grpcurl 1.8 speaks only `v1alpha`), behind the role check of
//! [`crate::roles`]. Shared by the node and the controller.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tower_layer::{Identity, Stack};

use crate::roles::{Access, AccessLayer};
use crate::telemetry::RpcTraceLayer;
use crate::tls::ControlTls;

/// The router `serve_grpc` hands to its caller: every service added to it sits behind
/// the [`AccessLayer`].
pub type Router = tonic::transport::server::Router<Stack<AccessLayer, Stack<RpcTraceLayer, Identity>>>;

/// Serves the services `router_for` adds (plus health and reflection) on `listener` until
/// `stop` turns true. Reflection advertises `service_name` and health only: the
/// descriptor set also describes the other side's service, which is not served here.
///
/// `access` says which roles may call this server; it applies to every request, health
/// and reflection included. `tls` and `access` go together: both `None` is the plain-text
/// mode of `--insecure-control-plane`; TLS without a rule refuses every call, and so does
/// a rule without TLS (no certificate to check).
///
/// `tracer`: each request gets a server span, child of the `traceparent` it carries
/// ([`RpcTraceLayer`], outside the role check so refusals are traced too).
#[allow(clippy::too_many_arguments)]
pub async fn serve_grpc(
    service_name: &str,
    router_for: impl FnOnce(Router) -> Router,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    listener: TcpListener,
    tls: Option<ControlTls>,
    access: Option<Access>,
    mut stop: watch::Receiver<bool>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> Result<(), tonic::transport::Error> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(palisade_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service_name)
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| {
        tracing::error!(error = %e, "reflection v1");
        e
    });
    let reflection_v1alpha = reflection().build_v1alpha();
    let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(20)));
    if let Some(t) = &tls {
        builder = builder.tls_config(t.server_config())?;
    }
    let mut router =
        builder.layer(RpcTraceLayer::new(tracer)).layer(AccessLayer::new(service_name, tls.is_some(), access)).add_service(health_service);
    if let Ok(r) = reflection_v1 {
        router = router.add_service(r);
    }
    if let Ok(r) = reflection_v1alpha {
        router = router.add_service(r);
    }
    let router = router_for(router);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    router
        .serve_with_incoming_shutdown(incoming, async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
}
