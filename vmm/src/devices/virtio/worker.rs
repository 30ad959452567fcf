//! The thread a device serves its queues on: it sleeps in epoll on the queues' eventfds (and
//! the device's own sources) and stops when told to, at reset or VM end.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, ActiveQueues, INT_USED_RING, WATCHDOG_PERIOD};

/// Starts the worker of a one-queue device: on each notification `serve` handles the queue
/// (returning whether it completed anything) and the guest is interrupted if it wants to be.
pub fn spawn_single_queue<F>(name: &str, active: ActiveQueues, mut serve: F) -> Result<Worker, ActivateError>
where
    F: FnMut(&mut Queue, &GuestMemoryMmap) -> bool + Send + 'static,
{
    let ActiveQueues { mem, mut queues, events, interrupt } = active;
    let (Some(mut queue), Some(event)) = (queues.pop(), events.into_iter().next()) else {
        return Err(ActivateError::BadQueues);
    };
    let fd = event.as_raw_fd();
    let mut last_raised = 0;
    let label = name.to_owned();
    Worker::spawn(name, vec![(fd, 0)], move |token| {
        let _ = event.read();
        let served = serve(&mut queue, &mem);
        if token == TICK_TOKEN {
            // Requests whose notification is late or lost, or an interrupt the guest never took.
            if served {
                tracing::debug!("{label}: served requests found by the watchdog");
            }
            if interrupt.reraise_if_unseen(&mut last_raised) {
                tracing::info!("{label}: the guest left an interrupt unacknowledged; raised it again");
            }
        }
        if served && queue.needs_notification(&mem).unwrap_or(true) {
            interrupt.signal(INT_USED_RING);
        }
        true
    })
    .map_err(ActivateError::Worker)
}

/// Token of the stop event in the worker's epoll set.
const STOP_TOKEN: u64 = u64::MAX;
/// Passed to `on_event` every `WATCHDOG_PERIOD`, whatever else happens.
pub const TICK_TOKEN: u64 = u64::MAX - 1;

/// A running device worker.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `name`, calling `on_event(token)` whenever one of `sources` (fd, token) is readable,
    /// and with `TICK_TOKEN` every `WATCHDOG_PERIOD`. `on_event` returns false to end the worker.
    pub fn spawn<F>(name: &str, sources: Vec<(RawFd, u64)>, mut on_event: F) -> std::io::Result<Worker>
    where
        F: FnMut(u64) -> bool + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, STOP_TOKEN))?;
        for (fd, token) in sources {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))?;
        }
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let mut events = vec![EpollEvent::default(); 16];
            let mut next_tick = Instant::now() + WATCHDOG_PERIOD;
            loop {
                let now = Instant::now();
                if now >= next_tick {
                    next_tick = now + WATCHDOG_PERIOD;
                    if !on_event(TICK_TOKEN) {
                        return;
                    }
                }
                let timeout = next_tick.saturating_duration_since(now).as_millis() as i32 + 1;
                let n = match epoll.wait(timeout, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("device worker epoll failed: {e}");
                        return;
                    }
                };
                for ev in &events[..n] {
                    if ev.data() == STOP_TOKEN || !on_event(ev.data()) {
                        return;
                    }
                }
            }
        })?;
        Ok(Worker { stop, thread: Some(thread) })
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
