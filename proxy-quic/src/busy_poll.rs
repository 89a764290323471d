//! Busy polling: a proxy's thread keeps polling its sockets for a short window after traffic
//! instead of going to sleep, so the next packet finds it awake.
//!
//! Why: on a virtual machine whose idle vCPUs halt (the guest's `haltpoll` idle driver with
//! `guest_halt_poll_ns = 0`), every sleep of the proxy's thread ends in a wake-up through the
//! hypervisor (an inter-processor interrupt to a halted vCPU). A round trip through a sidecar
//! pair wakes six processes in turn; on such a host those wake-ups, not the proxies' work, set
//! its latency (BENCHMARKS.md, "Busy polling"). A thread that is still polling when the next
//! packet comes needs no wake-up at all. It is what haproxy's `busy-polling` does, bounded:
//! haproxy never sleeps, here a proxy spins at most `window` after its last datagram, so an
//! idle proxy costs nothing and a busy one little more than it already spends. Off unless
//! asked for (`murmur connect proxy --busy-poll 50us`): it trades CPU for latency.
//!
//! How: the proxy's socket calls [`BusyPoll::touch`] on every datagram batch it sends or
//! receives; [`BusyPoll::run`], a task on the proxy's runtime, then yields to the runtime in a
//! loop (each yield makes the runtime poll its sockets without blocking, and lets other
//! threads on the core run) until `window` passes with no datagram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The busy-polling state one runtime's socket and spinner share.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    /// Datagram batches seen; the spinner spins on while this changes.
    activity: AtomicU64,
    /// The spinner is waiting for traffic (and must be woken by the next [`Self::touch`]).
    sleeping: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    /// Polling that lasts `window` after the last datagram.
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            window,
            activity: AtomicU64::new(0),
            sleeping: AtomicBool::new(true),
            wake: Notify::new(),
        })
    }

    /// Records traffic: starts polling, or extends it by another window.
    pub fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether the spinner is polling now, or has been woken to.
    #[cfg(test)]
    pub(crate) fn polling(&self) -> bool {
        !self.sleeping.load(Ordering::Acquire)
    }

    /// Spins while traffic comes, sleeps while it does not; never returns. Spawn it on the
    /// runtime whose thread should stay awake: on a runtime with one worker thread (what
    /// `murmur connect proxy` runs by default) that is the thread moving the traffic.
    pub async fn run(self: Arc<Self>) {
        loop {
            // A touch between here and the wait below leaves a permit: no wake-up is lost.
            self.wake.notified().await;
            let mut seen = self.activity.load(Ordering::Relaxed);
            let mut until = Instant::now() + self.window;
            loop {
                // Back to the runtime, which polls its sockets without blocking (there is a
                // task to run again: this one) and runs whatever became ready; then offer the
                // core to any other thread waiting for it, such as the app this proxy serves.
                tokio::task::yield_now().await;
                std::thread::yield_now();
                let now = Instant::now();
                let current = self.activity.load(Ordering::Relaxed);
                if current != seen {
                    seen = current;
                    until = now + self.window;
                } else if now >= until {
                    break;
                }
            }
            self.sleeping.store(true, Ordering::Release);
            // Traffic that came after the last look but before `sleeping` was set found the
            // spinner awake and did not wake it: look once more.
            if self.activity.load(Ordering::Relaxed) != seen
                && self.sleeping.swap(false, Ordering::AcqRel)
            {
                self.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 5 s for `polling()` to become `expected`.
    async fn until_polling(busy: &BusyPoll, expected: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while busy.polling() != expected {
            assert!(
                Instant::now() < deadline,
                "polling stayed {}",
                busy.polling()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn polls_while_traffic_comes_and_sleeps_a_window_after_it_stops() {
        // Much longer than the gaps below, so a test thread descheduled for a while on a busy
        // machine does not end polling early.
        let window = Duration::from_millis(300);
        let busy = BusyPoll::new(window);
        let spinner = tokio::spawn(busy.clone().run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!busy.polling(), "polls before any traffic");

        // Traffic every 30 ms for 900 ms, three windows: polling never stops in between.
        busy.touch();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(900) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(busy.polling(), "stopped polling while traffic came");
            busy.touch();
        }
        // Then none: it stops, one window (not much more) after the last datagram.
        let last = Instant::now();
        until_polling(&busy, false).await;
        let stopped_after = last.elapsed();
        assert!(
            stopped_after >= window && stopped_after < window * 5,
            "stopped {stopped_after:?} after the last datagram, window {window:?}"
        );

        // And starts again with the next datagram.
        busy.touch();
        until_polling(&busy, true).await;
        until_polling(&busy, false).await;
        spinner.abort();
    }
}
