"""Prometheus metrics of the flow, defined once (the registry is process-global).

Names are the contract with the Grafana dashboard and alert rules in deploy/.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kappa.batch_histogram import BatchHistogram

EVENTS_CONSUMED = Counter("kappa_events_consumed", "Records read from the source topic.",
                          ["topic"])
EVENTS_VALID = Counter("kappa_events_valid", "Records that passed validation.", ["topic"])
EVENTS_QUARANTINED = Counter("kappa_events_quarantined", "Records sent to quarantine.",
                             ["topic", "reason"])
WINDOWS_EMITTED = Counter("kappa_windows_emitted", "Feature rows emitted.",
                          ["view", "final"])
SINK_WRITE_SECONDS = Histogram(
    "kappa_sink_write_seconds", "Latency of one batched sink write.", ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_ROWS = Counter("kappa_sink_rows", "Rows written by a sink.", ["sink"])
SINK_ERRORS = Counter("kappa_sink_errors", "Failed sink write attempts (retried).", ["sink"])
FRESHNESS_SECONDS = BatchHistogram(
    "kappa_freshness_seconds",
    "Ingest (record timestamp) to visible in Redis, per flushed entity.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
PARTITION_CLOCK = Gauge("kappa_partition_ingest_clock_ms",
                        "Ingest clock (max record timestamp) per source partition.",
                        ["topic", "partition"])
WATERMARK = Gauge("kappa_window_watermark_ms",
                  "Minimum ingest clock over all partitions, as seen by a feature shard.",
                  ["shard"])
OPEN_WINDOWS = Gauge("kappa_open_windows", "Windows held open in state.", ["view", "shard"])
ICEBERG_COMMIT_SECONDS = Histogram(
    "kappa_iceberg_commit_seconds", "Latency of one Iceberg append commit (incl. retries).",
    ["table"], buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 10),
)
ICEBERG_SNAPSHOTS = Gauge("kappa_iceberg_snapshots", "Snapshots retained by a table.", ["table"])
ICEBERG_DATA_FILES = Gauge("kappa_iceberg_data_files",
                           "Live data files of a table (at its last maintenance run).", ["table"])
ICEBERG_PARTITION_FILES_MAX = Gauge(
    "kappa_iceberg_partition_files_max",
    "Most live data files in one partition of a table (at its last maintenance run).", ["table"])
MAINTENANCE_LAST_RUN = Gauge("kappa_iceberg_maintenance_last_run_timestamp_seconds",
                             "Wall-clock time of the last completed maintenance run.", ["table"])
MAINTENANCE_EFFECT = Counter(
    "kappa_iceberg_maintenance_effect",
    "What maintenance did: files_rewritten, snapshots_expired, orphan_files_removed, bytes_removed.",
    ["table", "effect"])
MAINTENANCE_ERRORS = Counter("kappa_iceberg_maintenance_errors",
                             "Maintenance runs that failed (retried at the next interval).", ["table"])

PROFILE_STAT = Gauge("kappa_profile_stat",
                     "Statistic of a field in the last closed profile window "
                     "(count, null_rate, mean, stddev, p50, p99).", ["scope", "field", "stat"])
QUALITY = Gauge("kappa_quality_ratio",
                "Quality dimension of the last closed profile window: completeness, validity, "
                "uniqueness, timeliness (shares of consumed records, 1 is best).", ["dimension"])
DRIFT_PSI = Gauge("kappa_drift_psi",
                  "Population stability index of a numeric field's last closed profile window "
                  "against its reference (> 0.25: drifted).", ["scope", "field"])
PROFILE_WINDOWS = Counter("kappa_profile_windows_closed", "Profile windows closed.", ["scope"])
PROFILE_STRAGGLERS = Counter(
    "kappa_profile_stragglers",
    "Profile contributions that arrived for an already closed window (counted, not profiled).",
    ["scope"])


def serve_metrics(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (0 disables); called once per process."""
    if port:
        start_http_server(port)
