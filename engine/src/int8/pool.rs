//! The threads that share the int8 products: the calling thread plus workers that spin between
//! products.
//!
//! Why not tract's rayon pool: a decoding step runs ~25 products of 30–300 µs each, and handing
//! one to rayon (wake a sleeping worker, block the caller until it is done) cost 60–100 µs on
//! the 2-core benchmark machine, so only the LM head was worth splitting and the rest of each
//! step streamed its weights from one core. Here a product starts on every thread within a
//! microsecond: the workers spin for [`SPIN_FOR`] after each job before they sleep, and the
//! caller works on the product too instead of waiting for it.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the float work between two
/// products of a caption, far shorter than the time between two captions.
const SPIN_FOR: Duration = Duration::from_millis(2);

/// `threads` threads in all, the caller included.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: a second caller waits for the first.
    running: Mutex<()>,
}

/// A job's function, its lifetime erased: it is only called between the job's start and the
/// moment every worker has reported back, while the caller keeps the closure alive.
type Task = *const (dyn Fn(usize) + Sync + 'static);

struct Shared {
    /// Bumped for each job (and to stop); a worker waits for it to change.
    generation: AtomicU64,
    task: UnsafeCell<Task>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current job.
    busy: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `task` is written only by the caller holding `running` while no worker is busy, and
// read by workers only after they see the job's generation (release/acquire on `generation`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let noop: &(dyn Fn(usize) + Sync) = &|_| {};
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            task: UnsafeCell::new(noop as Task),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("edgecap-int8-{i}"))
                    .spawn(move || shared.serve())
                    .expect("cannot start an int8 worker thread")
            })
            .collect();
        Pool { shared, workers, running: Mutex::new(()) }
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i` in `0..tasks`, spread over the pool's threads; returns when
    /// all have run. A panic in `f` is raised again here, after every thread has stopped.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.workers.is_empty() {
            (0..tasks).for_each(f);
            return;
        }
        let _one_job = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY: no worker is busy (the last job waited for all of them) and they only read the
        // task after seeing the generation bumped below; the lifetime is erased because `f`
        // outlives every call, which all end before this function returns.
        unsafe { *s.task.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(f) };
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        s.wake_sleepers();
        let mine = catch_unwind(AssertUnwindSafe(|| s.work(f)));
        while s.busy.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        let worker_panicked = s.panicked.swap(false, Ordering::Relaxed);
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if worker_panicked {
            panic!("an int8 worker thread panicked");
        }
    }

    /// Splits `out` into chunks of `chunk_len` (the last may be shorter) and calls
    /// `f(index, chunk)` for each, spread over the pool's threads.
    pub fn for_each_chunk_mut<T: Send>(&self, out: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let chunk_len = chunk_len.max(1);
        let (len, base) = (out.len(), SendPtr(out.as_mut_ptr()));
        self.run(len.div_ceil(chunk_len), &|i| {
            let start = i * chunk_len;
            let base = &base;
            // SAFETY: each index is handed out once, so the chunks are disjoint parts of `out`,
            // which stays borrowed until `run` returns.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk_len.min(len - start)) };
            f(i, chunk)
        });
    }
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint chunks of one slice to the pool's threads.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.wake_sleepers();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn work(&self, f: &(dyn Fn(usize) + Sync)) {
        let tasks = self.tasks.load(Ordering::Relaxed);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                return;
            }
            f(i);
        }
    }

    /// A worker's life: wait for a job, take tasks until none are left, report back.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            seen = self.wait_for_job(seen);
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            // SAFETY: the generation changed, so the caller has stored this job's task and keeps
            // it alive until `busy` reaches 0 below.
            let task = unsafe { &**self.task.get() };
            if catch_unwind(AssertUnwindSafe(|| self.work(task))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.busy.fetch_sub(1, Ordering::Release);
        }
    }

    /// The generation after `seen`: spun for, then slept for.
    fn wait_for_job(&self, seen: u64) -> u64 {
        let started = Instant::now();
        for spin in 1u32.. {
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            std::hint::spin_loop();
            if spin % 1024 == 0 && started.elapsed() > SPIN_FOR {
                break;
            }
        }
        let mut guard = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        // Counted under the lock, then the generation checked again: a job started in between is
        // seen here, and one started after finds this sleeper to wake.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let now = self.generation.load(Ordering::SeqCst);
            if now != seen {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return now;
            }
            guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn wake_sleepers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }
}

/// The pool the int8 products use, set by [`set_threads`] (one thread until then).
static CURRENT: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

/// Shares the int8 products between `threads` threads from now on, process-wide.
pub fn set_threads(threads: usize) {
    let pool = (threads > 1).then(|| Arc::new(Pool::new(threads)));
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = pool;
}

/// The current pool; `None`: products run on the calling thread.
pub fn current() -> Option<Arc<Pool>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(3);
        for job in 0..200usize {
            let tasks = job % 17;
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "job {job}");
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_workers_wake_from_sleep() {
        let pool = Pool::new(2);
        let mut out = vec![0usize; 1001];
        pool.for_each_chunk_mut(&mut out, 100, |i, chunk| chunk.iter_mut().for_each(|v| *v += i + 1));
        assert!(out.iter().enumerate().all(|(j, &v)| v == j / 100 + 1));
        // Past the spin, the worker is asleep; the next job must still finish.
        std::thread::sleep(SPIN_FOR * 3);
        pool.for_each_chunk_mut(&mut out, 7, |_, chunk| chunk.iter_mut().for_each(|v| *v = 0));
        assert!(out.iter().all(|&v| v == 0));
    }

    #[test]
    fn a_panicking_task_is_raised_in_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(caught.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
