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

#[cfg(feature = "tls")]
pub mod tls;

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

/// A small deterministic random generator for traffic simulations, so that a
/// scenario sends the same requests on every run.
pub mod rng {
    /// xorshift64*: fast, seedable, not for anything secret.
    #[derive(Debug, Clone)]
    pub struct Rng(u64);

    impl Rng {
        /// A generator from `seed` (0 is taken as 1).
        pub fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        /// The next 64 random bits.
        #[allow(clippy::should_implement_trait)]
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// A number in `0..n` (0 when `n` is 0).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        /// A number in `[0, 1)`.
        pub fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Rng;

        #[test]
        fn the_same_seed_gives_the_same_sequence_in_range() {
            let (mut a, mut b) = (Rng::new(7), Rng::new(7));
            for _ in 0..1000 {
                assert_eq!(a.next(), b.next());
                let u = a.unit();
                assert!((0.0..1.0).contains(&u));
                assert!(a.below(10) < 10);
                b.unit();
                b.below(10);
            }
            assert_ne!(Rng::new(1).next(), Rng::new(2).next());
        }
    }
}

/// Temporary directories that tests and benchmarks write audit logs into, removed
/// with their contents when dropped (also when the test panics).
pub mod temp {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory removed with its contents when dropped.
    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// A fresh directory `<temp>/<name>-<pid>-<n>`, unique within the process.
        ///
        /// # Panics
        /// When the directory cannot be created.
        pub fn unique(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Self::create(std::env::temp_dir().join(format!("{name}-{}-{n}", std::process::id())))
        }

        /// This process's directory `<temp>/<prefix>-<pid>`. A process that was
        /// killed could not remove its own, so the `<prefix>-<pid>` directories of
        /// processes that no longer exist are removed first (where `/proc` tells).
        ///
        /// # Panics
        /// When the directory cannot be created.
        pub fn per_process(prefix: &str) -> Self {
            let tmp = std::env::temp_dir();
            let stale = |name: &str| {
                name.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            };
            if Path::new("/proc/self").exists()
                && let Ok(entries) = std::fs::read_dir(&tmp)
            {
                for entry in entries.flatten() {
                    if entry.file_name().to_str().is_some_and(stale) {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            Self::create(tmp.join(format!("{prefix}-{}", std::process::id())))
        }

        fn create(dir: PathBuf) -> Self {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("cannot create {}: {e}", dir.display());
            }
            Self(dir)
        }

        /// The path of `name` in this directory, which lives as long as the file.
        pub fn file(self, name: &str) -> TempFile {
            TempFile {
                path: self.0.join(name),
                _dir: self,
            }
        }
    }

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempDir {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file in a [`TempDir`] of its own, removed with it.
    #[derive(Debug)]
    pub struct TempFile {
        path: PathBuf,
        _dir: TempDir,
    }

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    impl AsRef<Path> for TempFile {
        fn as_ref(&self) -> &Path {
            &self.path
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn directories_go_when_dropped_and_stale_ones_are_swept() {
            let dir = TempDir::unique("nhi-guard-testkit-unique");
            let path = dir.to_path_buf();
            std::fs::write(dir.join("a"), b"x").expect("write");
            let file = dir.file("b");
            assert!(path.is_dir());
            drop(file);
            assert!(!path.exists(), "removed with its file");

            if Path::new("/proc/self").exists() {
                let prefix = "nhi-guard-testkit-sweep";
                let tmp = std::env::temp_dir();
                // u32::MAX is above any Linux pid: a process that is gone. Pid 1 is alive.
                let dead = tmp.join(format!("{prefix}-{}", u32::MAX));
                let alive = tmp.join(format!("{prefix}-1"));
                std::fs::create_dir_all(&dead).expect("dead");
                std::fs::create_dir_all(&alive).expect("alive");
                let mine = TempDir::per_process(prefix);
                assert!(!dead.exists(), "a dead process's directory is swept");
                assert!(alive.exists(), "a live process's directory is kept");
                assert!(mine.ends_with(format!("{prefix}-{}", std::process::id())));
                let _ = std::fs::remove_dir_all(&alive);
            }
        }
    }
}
