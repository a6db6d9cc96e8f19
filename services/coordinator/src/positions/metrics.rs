//! The Prometheus text exposition of a [`Status`].

use ferry_shared::topics::Destination;

use super::*;

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of `status`.
pub fn metrics(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut section = |name: &str, help: &str, kind: &str, rows: Vec<String>| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in rows {
            let _ = writeln!(text, "{name}{r}");
        }
    };
    section(
        "ferry_stream_last_vsn",
        "Last VSN stamped by the stream's exporter.",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.last_vsn))
            .collect(),
    );
    section(
        "ferry_stream_records",
        "Records in the stream's table topics (sum of high watermarks).",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.records))
            .collect(),
    );
    section(
        "ferry_exporter_rate_events_per_second",
        "Exporter rate over the last 3 minutes.",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.rate_3m))
            .collect(),
    );
    section(
        "ferry_importer_remaining_events",
        "Records of the importer's stream not yet applied.",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.remaining))
            .collect(),
    );
    section(
        "ferry_importer_instances",
        "Importer processes by state (running, standby, retrying, stopped, failed, not seen).",
        "gauge",
        s.importers
            .iter()
            .flat_map(|i| {
                [
                    "running", "standby", "retrying", "stopped", "failed", "not seen",
                ]
                .into_iter()
                .map(move |state| {
                    let n = i
                        .instance_states
                        .iter()
                        .filter(|x| x.state == state)
                        .count();
                    format!(
                        "{{destination=\"{}\",state=\"{}\"}} {n}",
                        i.destination,
                        state.replace(' ', "_")
                    )
                })
            })
            .collect(),
    );
    section(
        "ferry_exporter_failed",
        "1 when the stream's exporter stopped on a definite error (see cutover status).",
        "gauge",
        s.streams
            .iter()
            .map(|st| {
                format!(
                    "{{stream=\"{}\"}} {}",
                    st.stream,
                    u8::from(st.exporter_phase == "failed")
                )
            })
            .collect(),
    );
    section(
        "ferry_importer_applied_vsn",
        "Highest VSN applied by the importer group.",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.applied_vsn))
            .collect(),
    );
    section(
        "ferry_importer_rate_events_per_second",
        "Importer rate over the last 3 minutes (all instances).",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.rate_3m))
            .collect(),
    );
    section(
        "ferry_importer_running_instances",
        "Importer processes with a recent heartbeat that apply or wait (running, standby, retrying).",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.instances))
            .collect(),
    );
    section(
        "ferry_instance_error",
        "Unix time (seconds) of the current error of an exporter or importer instance, by kind (transient: it retries; definite or fatal: it stopped); gone once an instance of its unit runs successfully again. The message is in ferry cutover status.",
        "gauge",
        s.errors
            .iter()
            .map(|e| {
                format!(
                    "{{role=\"{}\",unit=\"{}\",instance=\"{}\",kind=\"{}\"}} {}",
                    label(&e.role),
                    label(&e.unit),
                    label(&e.instance),
                    label(&e.error.kind),
                    e.error.at_ms as f64 / 1000.0
                )
            })
            .collect(),
    );
    section(
        "ferry_cutover_status",
        "Cutover status: 0 not initiated, 1 initiated, 2 completed.",
        "gauge",
        [
            Destination::Target,
            Destination::SourceReplica,
            Destination::Source,
        ]
        .into_iter()
        .map(|d| {
            let v = match s.migration.cutover(d).status {
                ferry_shared::state::CutoverStatus::NotInitiated => 0,
                ferry_shared::state::CutoverStatus::Initiated => 1,
                ferry_shared::state::CutoverStatus::Completed => 2,
            };
            format!("{{to=\"{d}\"}} {v}")
        })
        .collect(),
    );
    text
}
