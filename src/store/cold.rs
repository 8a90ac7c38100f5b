//! The cold-read judgement: whether the commit thread waits on pages the
//! engine reads from the device, judged from the bytes the device read for
//! it over windows of [`COLD_WINDOW_MILLIS`]. While the store reads cold,
//! scoped reads are decided ahead of the commit thread (`consent::read`).

use std::time::{Duration, Instant};

/// The commit thread's window over what the storage device has read for
/// it and for the reads made ahead of it ([`Backend::disk_read_bytes`]):
/// judged after its batches, once per [`COLD_WINDOW_MILLIS`], into the
/// verdict [`Store::reads_cold`] loads.
#[derive(Debug, Default)]
pub(super) struct ColdWindow {
    /// When the current window started (none yet: the first look only
    /// starts it, so what was read before does not count).
    checked: Option<Instant>,
    bytes: u64,
}

/// How often a [`ColdWindow`] looks at the engine's disk reads again.
const COLD_WINDOW_MILLIS: u64 = 500;

/// Disk reads per second above which the engine is taken to read cold
/// pages: at 10^6 subjects, fifty times the engine's cache, scoped reads
/// had the disk read 100–290 MB/s; at 10^4 and 10^5, whose pages the OS
/// cache holds, next to nothing (`docs/PERFORMANCE.md`) ...
const COLD_BYTES_PER_SEC: u64 = 16 << 20;

/// ... and below which it is taken to be warm again. In between, the
/// verdict stays, so that a store at the edge does not switch back and
/// forth.
const WARM_BYTES_PER_SEC: u64 = 4 << 20;

/// Whether the engine reads cold pages, given that it read `bytes` from the
/// device in `millis` and the verdict was `was`.
fn reads_cold_by_rate(bytes: u64, millis: u64, was: bool) -> bool {
    let per_sec = bytes.saturating_mul(1000) / millis.max(1);
    if was { per_sec > WARM_BYTES_PER_SEC } else { per_sec > COLD_BYTES_PER_SEC }
}

impl ColdWindow {
    /// The verdict after `was`, judged again from `bytes_read` (a running
    /// total) once a window has passed: `Some` with the new verdict when a
    /// whole window was judged, `None` when the verdict stays `was` (inside
    /// a window, at the first look, or when the engine cannot tell).
    pub(super) fn judge(&mut self, was: bool, bytes_read: impl FnOnce() -> Option<u64>) -> Option<bool> {
        let now = Instant::now();
        let elapsed = self.checked.map(|checked| now.duration_since(checked));
        if elapsed.is_some_and(|elapsed| elapsed < Duration::from_millis(COLD_WINDOW_MILLIS)) {
            return None;
        }
        self.checked = Some(now);
        // An engine that cannot tell keeps the verdict it had (warm from
        // the start, so one that never tells is never taken to be cold) and
        // its running total.
        let total = bytes_read()?;
        let read = total.saturating_sub(std::mem::replace(&mut self.bytes, total));
        let millis = u64::try_from(elapsed?.as_millis()).unwrap_or(u64::MAX);
        Some(reads_cold_by_rate(read, millis, was))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_judged_cold_by_its_disk_read_rate_with_a_band_between() {
        let mib = 1 << 20;
        assert!(reads_cold_by_rate(10 * mib, 500, false), "20 MiB/s: cold");
        assert!(!reads_cold_by_rate(8 * mib, 500, false), "16 MiB/s is not more than 16");
        assert!(reads_cold_by_rate(5 * mib, 1000, true), "5 MiB/s: in the band, a cold verdict stays");
        assert!(!reads_cold_by_rate(5 * mib, 1000, false), "and so does a warm one");
        assert!(!reads_cold_by_rate(mib, 500, true), "2 MiB/s: warm again");
        assert!(!reads_cold_by_rate(0, 0, true), "no time, no reads: warm");
    }

    #[test]
    fn a_cold_window_is_judged_again_each_window_from_the_bytes_read_since() {
        let mut window = ColdWindow::default();
        let mut total = 0u64;
        let pause = Duration::from_millis(COLD_WINDOW_MILLIS + 10);
        let mut verdict = false;
        let mut read = |bytes: u64, verdict: &mut bool| {
            total += bytes;
            std::thread::sleep(pause);
            *verdict = window.judge(*verdict, || Some(total)).unwrap_or(*verdict);
            *verdict
        };
        // The first look only starts the first window, whatever was read
        // before.
        assert!(!read(1 << 40, &mut verdict));
        assert!(read(64 << 20, &mut verdict), "64 MiB in half a second");
        assert!(read(3 << 20, &mut verdict), "6 MiB/s: still cold");
        assert!(!read(0, &mut verdict), "nothing read: warm");
        assert_eq!(window.judge(false, || panic!("judged inside a window")), None, "judged once per window");
        std::thread::sleep(pause);
        assert_eq!(window.judge(false, || None), None, "an engine that cannot tell is never judged");
        // A look that fails keeps the verdict, and the running total.
        std::thread::sleep(pause);
        assert_eq!(window.judge(false, || Some(total + (64 << 20))), Some(true), "64 MiB in half a second");
        std::thread::sleep(pause);
        assert_eq!(window.judge(true, || None), None, "a look that fails keeps the verdict");
        std::thread::sleep(pause);
        assert_eq!(window.judge(true, || Some(total + (64 << 20))), Some(false), "nothing read since: warm");
    }
}
