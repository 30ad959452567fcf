//! An ordered parallel map: the writers compress blocks on every core but must emit them in
//! input order, with a bounded number of blocks in memory whatever the input size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

/// Worker threads for compression: one per core the process may use.
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Takes items from `input` (on the calling thread), runs `work` on them on `threads` workers
/// and hands the results to `sink` in input order (on one more thread). At most `window` items
/// are in flight (4 per thread keeps workers busy when items cost alike; inputs that mix heavy
/// items with many cheap ones need more). The first error from `input` or `sink` stops
/// everything and is returned.
pub fn ordered_map<I, O, E, In, W, S>(threads: usize, window: usize, input: In, work: W, sink: S) -> Result<(), E>
where
    I: Send,
    O: Send,
    E: Send,
    In: IntoIterator<Item = Result<I, E>>,
    W: Fn(I) -> O + Sync,
    S: FnMut(O) -> Result<(), E> + Send,
{
    let threads = threads.max(1);
    let window = window.max(threads);
    let stop = AtomicBool::new(false);
    // A token per item in flight: the producer takes one, the sink gives it back once the
    // item is written, so the reorder buffer never holds more than `window` items.
    let (token_tx, token_rx) = sync_channel::<()>(window);
    for _ in 0..window {
        let _ = token_tx.send(());
    }
    let (job_tx, job_rx) = sync_channel::<(u64, I)>(threads);
    // Shared by the workers only: if they all die (a panic), the producer's send fails
    // instead of blocking forever.
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = sync_channel::<(u64, O)>(window);

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let job_rx = Arc::clone(&job_rx);
            let (work, stop) = (&work, &stop);
            scope.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((seq, item)) = job else { return };
                if stop.load(Ordering::Relaxed) {
                    continue;
                }
                // The sink has gone: keep draining so the producer never blocks on a full queue.
                if done_tx.send((seq, work(item))).is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
            });
        }
        drop((done_tx, job_rx));
        let writer = {
            let stop = &stop;
            scope.spawn(move || write_in_order(done_rx, token_tx, sink, stop))
        };

        let mut result = Ok(());
        for (seq, item) in (0u64..).zip(input) {
            if stop.load(Ordering::Relaxed) || token_rx.recv().is_err() {
                break;
            }
            match item {
                Ok(item) => {
                    if job_tx.send((seq, item)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    result = Err(e);
                    break;
                }
            }
        }
        drop(job_tx);
        let written = writer.join().unwrap_or(Ok(()));
        result.and(written)
    })
}

fn write_in_order<O, E>(
    done: Receiver<(u64, O)>,
    tokens: std::sync::mpsc::SyncSender<()>,
    mut sink: impl FnMut(O) -> Result<(), E>,
    stop: &AtomicBool,
) -> Result<(), E> {
    let mut next = 0u64;
    let mut waiting = BTreeMap::new();
    for (seq, out) in done {
        waiting.insert(seq, out);
        while let Some(out) = waiting.remove(&next) {
            next += 1;
            if let Err(e) = sink(out) {
                stop.store(true, Ordering::Relaxed);
                // Unblocks the producer so it sees `stop`.
                drop(tokens);
                return Err(e);
            }
            let _ = tokens.send(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_input_order() {
        let mut out = Vec::new();
        let input = (0..1000u32).map(Ok::<_, String>);
        ordered_map(
            3,
            12,
            input,
            |x| {
                // Uneven work so results finish out of order.
                std::thread::sleep(std::time::Duration::from_micros(u64::from((x * 7919) % 50)));
                x * 2
            },
            |y| {
                out.push(y);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn errors_stop_the_map() {
        let input = (0..100u32).map(|x| if x == 40 { Err(format!("bad {x}")) } else { Ok(x) });
        let mut seen = 0;
        let r = ordered_map(
            2,
            8,
            input,
            |x| x,
            |_| {
                seen += 1;
                Ok(())
            },
        );
        assert_eq!(r, Err("bad 40".to_owned()));
        assert!(seen <= 40);
        let r = ordered_map(2, 8, (0..100u32).map(Ok), |x| x, |x| if x == 10 { Err(x) } else { Ok(()) });
        assert_eq!(r, Err(10));
    }

    #[test]
    fn a_panicking_worker_does_not_hang_the_map() {
        let r = std::panic::catch_unwind(|| {
            ordered_map(
                2,
                8,
                (0..10_000u32).map(Ok::<_, ()>),
                |x| if x >= 5 { panic!("worker {x}") } else { x },
                |_| Ok(()),
            )
        });
        assert!(r.is_err());
    }
}
