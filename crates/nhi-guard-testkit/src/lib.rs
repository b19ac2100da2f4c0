//! Test support shared by the nhi-guard crates' tests; not published.
//!
//! [`metrics::Snapshot`] asserts on what the guard recorded through the `metrics`
//! facade, read from a `metrics-util` debugging recorder:
//!
//! ```
//! use metrics_util::debugging::DebuggingRecorder;
//! use nhi_guard_core::Control;
//! use nhi_guard_core::metrics::{ControlMetrics, REQUESTS_TOTAL};
//! use nhi_guard_testkit::metrics::Snapshot;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || ControlMetrics::new(Control::Risk).allow());
//! let seen = Snapshot::take(&snapshotter);
//! assert_eq!(seen.counter(REQUESTS_TOTAL, &[("control", "risk"), ("decision", "allow")]), 1);
//! ```

/// Assertions on recorded metrics.
pub mod metrics {

    use metrics_util::debugging::{DebugValue, Snapshotter};
    use metrics_util::{CompositeKey, MetricKind};

    /// Every series recorded since the last snapshot (taking one resets the
    /// debugging recorder's counters).
    #[derive(Debug)]
    pub struct Snapshot(Vec<(CompositeKey, DebugValue)>);

    impl Snapshot {
        /// Takes a snapshot.
        pub fn take(snapshotter: &Snapshotter) -> Self {
            Self(
                snapshotter
                    .snapshot()
                    .into_vec()
                    .into_iter()
                    .map(|(k, _, _, v)| (k, v))
                    .collect(),
            )
        }

        /// The value of the series of this kind and name with exactly these labels.
        pub fn get(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
            self.0
                .iter()
                .find(|(k, _)| {
                    k.kind() == kind
                        && k.key().name() == name
                        && k.key().labels().count() == labels.len()
                        && labels
                            .iter()
                            .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
                })
                .map(|(_, v)| v)
        }

        /// A counter's value (0 when the series was not recorded).
        pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            match self.get(MetricKind::Counter, name, labels) {
                Some(DebugValue::Counter(n)) => *n,
                _ => 0,
            }
        }

        /// Every label value recorded, to check that no secret or identifier leaked
        /// into a label.
        pub fn label_values(&self) -> Vec<String> {
            self.0
                .iter()
                .flat_map(|(k, _)| k.key().labels().map(|l| l.value().to_owned()).collect::<Vec<_>>())
                .collect()
        }
    }
}
