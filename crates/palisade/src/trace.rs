//! The operator command's trace (SPEC section 9): with `OTEL_*` set, each operator verb
//! is the root span of one trace (`palisade <verb>`, service `palisade-cli`); its
//! context goes to the controller in every FleetControl request's metadata
//! (the operator client of `ops`), the controller's fan-out continues it to the nodes. `-v`
//! prints the trace id on stderr. Without an endpoint nothing of this runs.

use std::future::Future;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use palisade_plane::telemetry::{LogRoute, ServiceInfo, Signals, Telemetry};

/// Runs `op` as the root span `palisade <verb>` when traces are exported.
pub async fn operator(verb: &str, verbose: bool, op: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let traces = match palisade_plane::telemetry::process_signals() {
        Ok(s) => s.traces,
        Err(e) => {
            eprintln!("warning: telemetry off: {e}");
            false
        }
    };
    if !traces {
        return op.await;
    }
    let telemetry = match Telemetry::start_with(
        Signals { traces: true, metrics: false, logs: false },
        ServiceInfo {
            name: "palisade-cli",
            instance_id: format!("{}/{}", palisade_plane::telemetry::host_name(), std::process::id()),
            cluster: String::new(),
            route: LogRoute::Default,
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warning: telemetry off: {e}");
            return op.await;
        }
    };
    let Some(tracer) = telemetry.tracer() else { return op.await };
    let span = tracer
        .span_builder(format!("palisade {verb}"))
        .with_kind(SpanKind::Client)
        .with_attributes([KeyValue::new("palisade.command", verb.to_owned())])
        .start_with_context(tracer, &Context::new());
    let cx = Context::new().with_span(span);
    if verbose {
        eprintln!("trace id: {}", cx.span().span_context().trace_id());
    }
    let r = op.with_context(cx.clone()).await;
    if r.is_err() {
        cx.span().set_status(Status::error("the operation failed"));
    }
    cx.span().end();
    telemetry.shutdown().await;
    r
}
