use super::*;
use std::collections::HashMap;

fn signals(vars: &[(&str, &str)]) -> Result<Signals, String> {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Signals::from_lookup(|k| m.get(k).cloned())
}

#[test]
fn nothing_without_an_endpoint() {
    assert_eq!(signals(&[]), Ok(Signals::default()));
    assert_eq!(signals(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]), Ok(Signals::default()));
}

#[test]
fn endpoints_per_signal_and_switches() {
    let all = Signals { traces: true, metrics: true, logs: true };
    assert_eq!(signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]), Ok(all));
    assert_eq!(
        signals(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
        Ok(Signals { traces: true, metrics: false, logs: false })
    );
    assert_eq!(
        signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_LOGS_EXPORTER", "none")]),
        Ok(Signals { traces: true, metrics: true, logs: false })
    );
    assert_eq!(signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "TRUE")]), Ok(Signals::default()));
    assert_eq!(signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), Ok(all));
}

#[test]
fn other_protocols_and_exporters_are_errors_that_say_why() {
    let e =
        signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).expect_err("http");
    assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") && e.contains("gRPC"), "{e}");
    let e = signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")])
        .expect_err("per signal");
    assert!(e.contains("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"), "{e}");
    assert!(signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_EXPORTER", "zipkin")]).is_err());
    assert!(signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]).is_err());
}
