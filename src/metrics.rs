//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Every label value is drawn from a bounded set the vault defines (route
//! templates, methods, status classes, decision and reason codes, problem
//! codes); never an id, a name a caller chose, or a personal value. Each
//! vault (and each HTTP surface) holds its own: there is no global registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Bucket bounds, in seconds, for request and storage latencies.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bucket bounds for counts (transactions per batch).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(bucket) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes its samples under `name` with `labels`.
    pub fn write(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = format!("{bound}");
            out.labelled(&format!("{name}_bucket"), &[labels, &[("le", &le)]].concat(), cumulative);
        }
        let count = self.count();
        out.labelled(&format!("{name}_bucket"), &[labels, &[("le", "+Inf")]].concat(), count);
        out.labelled(&format!("{name}_sum"), labels, f64::from_bits(self.sum.load(Ordering::Relaxed)));
        out.labelled(&format!("{name}_count"), labels, count);
    }
}

/// A family's key for `values`.
fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

/// Counters under label values (a tuple of the family's labels).
#[derive(Debug, Default)]
pub struct CounterFamily {
    counters: RwLock<BTreeMap<Vec<String>, Arc<AtomicU64>>>,
}

impl CounterFamily {
    /// Adds one to the counter of `values`.
    pub fn inc(&self, values: &[&str]) {
        self.counter(values).fetch_add(1, Ordering::Relaxed);
    }

    /// The count under `values` (0 if never counted).
    pub fn get(&self, values: &[&str]) -> u64 {
        let counters = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.get(&owned(values)).map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    fn counter(&self, values: &[&str]) -> Arc<AtomicU64> {
        let key = owned(values);
        if let Some(counter) = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
            return Arc::clone(counter);
        }
        let mut counters = self.counters.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(counters.entry(key).or_default())
    }

    /// Writes the family, with `labels` naming the values of each counter.
    pub fn write(&self, out: &mut Exposition, name: &str, help: &str, labels: &[&str]) {
        out.header(name, "counter", help);
        let counters = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (values, counter) in counters.iter() {
            let pairs: Vec<(&str, &str)> = labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            out.labelled(name, &pairs, counter.load(Ordering::Relaxed));
        }
    }
}

/// The text of `/metrics` being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of a metric.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// A metric with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.labelled(name, &[], value);
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, "histogram", help);
        histogram.write(self, name, &[]);
    }

    /// A sample (labelled or not) of a metric whose header is written.
    pub fn labelled(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (n, (label, value)) in labels.iter().enumerate() {
                if n > 0 {
                    self.text.push(',');
                }
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.text
    }
}

/// How scoped reads were decided: by outcome, and the withheld fields by
/// reason code.
#[derive(Debug, Default)]
pub struct ReadDecisions {
    /// Logged reads by decision (`allow`, `partial`, `deny`).
    pub outcomes: CounterFamily,
    /// Withheld fields by reason code.
    pub withheld: CounterFamily,
}

/// What the process uses, from `/proc/self` (Linux): the `process_*`
/// metrics of the Prometheus conventions.
pub fn process_write(out: &mut Exposition) {
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|value| value.parse::<f64>().ok());
    if let (Some(user), Some(system)) = (field(11), field(12)) {
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            (user + system) / ticks,
        );
    }
    if let Some(virtual_bytes) = field(20) {
        out.single("process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.", virtual_bytes);
    }
    if let Some(resident_pages) = field(21) {
        out.single("process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.", resident_pages * page);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines().find_map(|line| line.strip_prefix("btime ").and_then(|t| t.trim().parse::<f64>().ok()))
    });
    if let (Some(boot), Some(started)) = (boot, field(19)) {
        out.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            boot + started / ticks,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single("process_open_fds", "gauge", "Open file descriptors.", fds.count());
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok());
    if let Some(max_fds) = max_fds {
        out.single("process_max_fds", "gauge", "The limit of open file descriptors.", max_fds);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let histogram = Histogram::new(&[1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 1.5, 3.0, 9.0] {
            histogram.observe(value);
        }
        let mut out = Exposition::default();
        out.histogram("x", "help", &histogram);
        let text = out.finish();
        for line in [
            "x_bucket{le=\"1\"} 2",
            "x_bucket{le=\"2\"} 3",
            "x_bucket{le=\"4\"} 4",
            "x_bucket{le=\"+Inf\"} 5",
            "x_sum 15",
            "x_count 5",
        ] {
            assert!(text.lines().any(|found| found == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let family = CounterFamily::default();
        family.inc(&["a\"b\\c"]);
        family.inc(&["a\"b\\c"]);
        let mut out = Exposition::default();
        family.write(&mut out, "y_total", "help", &["code"]);
        assert!(out.finish().contains("y_total{code=\"a\\\"b\\\\c\"} 2"));
        assert_eq!(family.get(&["a\"b\\c"]), 2);
    }
}
