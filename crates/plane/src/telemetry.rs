//! Telemetry (SPEC section 9): OTLP/gRPC export of traces, metrics and logs, set up from
//! the standard `OTEL_*` environment only, and the process's log lines on stdout.
//!
//! Design:
//!
//! - One [`Telemetry`] per *logical service*: each node and the controller build their
//!   own tracer, meter and logger providers with their own resource (`service.name`,
//!   `service.instance.id` = node id, `service.version`, `palisade.cluster`). In
//!   `palisade dev`, where a controller and N nodes share one process, each is still a
//!   resource of its own. Code paths take the tracer and the meter from their state
//!   (`NodeState`, the controller), never from the OpenTelemetry globals, which stay
//!   no-op.
//! - Log events go to stdout (JSON lines, or compact text) through `tracing-subscriber`;
//!   when logs are exported, a routing layer ([`logs`]) also hands each event to the
//!   logger of the service it belongs to (by its `node` field; everything else goes to
//!   the process's default service).
//! - Without an endpoint (or with `OTEL_SDK_DISABLED=true`) there is no exporter, no
//!   background thread and no provider: [`Telemetry::tracer`] and [`Telemetry::meter`]
//!   are `None`, and the data path pays one branch.
//! - The batch queues are bounded and never block: a span or log record that finds its
//!   queue full is dropped and counted ([`drops`]): `palisade.telemetry.dropped` and a
//!   `telemetry_dropped` warning. A dead or slow collector only fills the queue.
//!
//! What the SDK and the exporter read by themselves (opentelemetry_sdk /
//! opentelemetry-otlp 0.33): `OTEL_EXPORTER_OTLP_[{TRACES,METRICS,LOGS}_]ENDPOINT`,
//! `_HEADERS`, `_TIMEOUT`, `_COMPRESSION`; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (resource detectors); `OTEL_TRACES_SAMPLER[_ARG]` (default
//! `parentbased_always_on`); `OTEL_BSP_*`, `OTEL_BLRP_*`; `OTEL_METRIC_EXPORT_INTERVAL`.
//! What this module adds: whether to export at all (an endpoint is set for the signal),
//! `OTEL_SDK_DISABLED`, `OTEL_{TRACES,METRICS,LOGS}_EXPORTER` (`otlp` or `none`), the
//! protocol check (`OTEL_EXPORTER_OTLP_[{SIGNAL}_]PROTOCOL` must be `grpc`), our resource
//! defaults (overridden by `OTEL_SERVICE_NAME`), and the drop accounting.

mod batched;
mod drops;
mod json_lines;
pub mod logs;
pub mod rpc;

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};

pub use drops::Drops;
pub use logs::{LogFormat, init_logging};
pub use rpc::{RpcTraceLayer, extract, inject, request};

/// The instrumentation scope of every tracer and meter.
pub const SCOPE: &str = "palisade";

/// Which signals are exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub traces: bool,
    pub metrics: bool,
    pub logs: bool,
}

impl Signals {
    pub fn any(&self) -> bool {
        self.traces || self.metrics || self.logs
    }

    /// From the process environment.
    pub fn from_env() -> Result<Signals, String> {
        Signals::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Signals, String> {
        let set = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Signals::default());
        }
        let one = |signal: &str| -> Result<bool, String> {
            let exporter_var = format!("OTEL_{signal}_EXPORTER");
            match set(&exporter_var).as_deref() {
                None | Some("otlp") => {}
                Some("none") => return Ok(false),
                Some(other) => return Err(format!("{exporter_var}={other}: this build exports `otlp` (or `none`)")),
            }
            let endpoint = set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
            let Some(endpoint) = endpoint else { return Ok(false) };
            let protocol_var = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
            let protocol = set(&protocol_var)
                .map(|p| (protocol_var, p))
                .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), p)));
            if let Some((var, p)) = protocol
                && p != "grpc"
            {
                return Err(format!(
                    "{var}={p}: this build exports OTLP over gRPC only; set it to `grpc` (the default) and point the endpoint at the collector's gRPC port (usually 4317)"
                ));
            }
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!("OTLP endpoint `{endpoint}`: give a URL such as http://collector:4317"));
            }
            if endpoint.starts_with("https://") {
                return Err(format!(
                    "OTLP endpoint `{endpoint}`: this build speaks plain gRPC to the collector (run an agent or sidecar on the node's network); use http://"
                ));
            }
            Ok(true)
        };
        Ok(Signals { traces: one("TRACES")?, metrics: one("METRICS")?, logs: one("LOGS")? })
    }
}

/// The signals of this process, read once from its environment. An invalid setting is
/// an error here (the binary refuses to start with it) and no export elsewhere.
pub fn process_signals() -> &'static Result<Signals, String> {
    static SIGNALS: OnceLock<Result<Signals, String>> = OnceLock::new();
    SIGNALS.get_or_init(Signals::from_env)
}

/// Which log events a service's logger receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRoute {
    /// Events without a `node` field (the controller, the CLI, a lone node).
    Default,
    /// Events whose `node` field is this id (and the default ones while no service
    /// claims them).
    Node(String),
}

/// Who a [`Telemetry`] speaks for.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// `palisade-node`, `palisade-controller`, `palisade-cli` (`OTEL_SERVICE_NAME` wins).
    pub name: &'static str,
    /// `service.instance.id`: the node id, the controller's host:port.
    pub instance_id: String,
    pub cluster: String,
    pub route: LogRoute,
}

/// One logical service's providers; `Telemetry::default()` is off.
#[derive(Clone, Default)]
pub struct Telemetry(Option<Arc<Inner>>);

struct Inner {
    tracer: Option<SdkTracer>,
    meter: Option<Meter>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    route: LogRoute,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("on", &self.0.is_some()).finish()
    }
}

impl Telemetry {
    /// Telemetry for `svc` as the process environment says; off when nothing is
    /// exported or the settings are invalid (the binary reported them at start). Must
    /// run inside the tokio runtime (the exporters' channels are built here).
    pub fn start(svc: ServiceInfo) -> Telemetry {
        match process_signals() {
            Ok(s) if s.any() => Telemetry::start_with(*s, svc).unwrap_or_else(|e| {
                tracing::error!(event = "telemetry_failed", error = %e, "OTLP export is off");
                Telemetry::default()
            }),
            _ => Telemetry::default(),
        }
    }

    pub fn start_with(signals: Signals, svc: ServiceInfo) -> Result<Telemetry, String> {
        if !signals.any() {
            return Ok(Telemetry::default());
        }
        let resource = resource(&svc);
        let drops = Drops::new();
        let mut inner = Inner {
            tracer: None,
            meter: None,
            tracer_provider: None,
            meter_provider: None,
            logger_provider: None,
            route: svc.route.clone(),
        };
        if signals.traces {
            let exporter =
                opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| format!("OTLP trace exporter: {e}"))?;
            let queue = env_usize("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(2048).max(1);
            let batch = env_usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").unwrap_or(512).clamp(1, queue);
            let config = BatchConfigBuilder::default().with_max_queue_size(queue).with_max_export_batch_size(batch).build();
            let (gate, exporter) = drops::span_gate(exporter, queue, drops.clone());
            let processor = BatchSpanProcessor::builder(exporter).with_batch_config(config).build();
            let provider = SdkTracerProvider::builder().with_span_processor(gate.wrap(processor)).with_resource(resource.clone()).build();
            inner.tracer = Some(provider.tracer(SCOPE));
            inner.tracer_provider = Some(provider);
        }
        if signals.metrics {
            let exporter =
                opentelemetry_otlp::MetricExporter::builder().with_tonic().build().map_err(|e| format!("OTLP metric exporter: {e}"))?;
            let provider =
                SdkMeterProvider::builder().with_reader(PeriodicReader::builder(exporter).build()).with_resource(resource.clone()).build();
            let meter = provider.meter(SCOPE);
            drops.observe(&meter);
            inner.meter = Some(meter);
            inner.meter_provider = Some(provider);
        }
        if signals.logs {
            let exporter =
                opentelemetry_otlp::LogExporter::builder().with_tonic().build().map_err(|e| format!("OTLP log exporter: {e}"))?;
            let queue = env_usize("OTEL_BLRP_MAX_QUEUE_SIZE").unwrap_or(2048).max(1);
            let (gate, exporter) = drops::log_gate(exporter, queue, drops.clone());
            let processor = BatchLogProcessor::builder(exporter).build();
            let provider = SdkLoggerProvider::builder().with_log_processor(gate.wrap(processor)).with_resource(resource).build();
            logs::register(&svc.route, &provider);
            inner.logger_provider = Some(provider);
        }
        Ok(Telemetry(Some(Arc::new(inner))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The service's tracer, when traces are exported.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.0.as_ref()?.tracer.as_ref()
    }

    /// The service's meter, when metrics are exported.
    pub fn meter(&self) -> Option<&Meter> {
        self.0.as_ref()?.meter.as_ref()
    }

    /// Exports what is queued and stops the exporters (bounded by the SDK's timeouts).
    /// Runs the blocking shutdown off the async workers.
    pub async fn shutdown(&self) {
        let Some(inner) = self.0.clone() else { return };
        let _ = tokio::task::spawn_blocking(move || {
            logs::unregister(&inner.route);
            if let Some(p) = &inner.tracer_provider {
                let _ = p.shutdown();
            }
            if let Some(p) = &inner.meter_provider {
                let _ = p.shutdown();
            }
            if let Some(p) = &inner.logger_provider {
                let _ = p.shutdown();
            }
        })
        .await;
    }
}

/// The machine's host name (`HOSTNAME`, else the kernel's), for instance ids.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "localhost".into())
}

fn env_usize(k: &str) -> Option<usize> {
    std::env::var(k).ok()?.trim().parse().ok()
}

/// The service's resource: the SDK's detectors (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `telemetry.sdk.*`), then ours. `service.name` is ours only
/// when the environment names none; the instance id and cluster are always ours (in
/// `palisade dev` every node shares one environment).
fn resource(svc: &ServiceInfo) -> Resource {
    let env_names_service = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
    let mut b = Resource::builder();
    if !env_names_service {
        b = b.with_service_name(svc.name);
    }
    b = b.with_attributes([
        KeyValue::new("service.instance.id", svc.instance_id.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    if !svc.cluster.is_empty() {
        b = b.with_attribute(KeyValue::new("palisade.cluster", svc.cluster.clone()));
    }
    b.build()
}

/// The W3C trace id and span id of a span context, as lowercase hex.
pub fn ids(cx: &opentelemetry::trace::SpanContext) -> Option<(String, String)> {
    cx.is_valid().then(|| (cx.trace_id().to_string(), cx.span_id().to_string()))
}

#[cfg(test)]
mod tests;
