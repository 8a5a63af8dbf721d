//! The local executor: jobs on a pool of threads of this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Executor;
use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::run::job::{NodeResult, Status};
use crate::run::worker::{result, run_job, Runtime};
use crate::store::Store;

/// Runs jobs on `jobs` threads of this process (scoped: the pool lives as
/// long as the `std::thread::scope` it was started in).
pub struct LocalExecutor {
    capacity: usize,
    serial_device: bool,
    jobs: Option<mpsc::Sender<StageJob>>,
    results: mpsc::Receiver<(usize, NodeResult)>,
    dropped: Arc<AtomicBool>,
}

impl LocalExecutor {
    /// Start `threads` workers in `scope`; each runs [`run_job`].
    pub fn start<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        threads: usize,
        store: &'env Store,
        rt: &'env Runtime<'env>,
    ) -> LocalExecutor {
        let (job_tx, job_rx) = mpsc::channel::<StageJob>();
        let (res_tx, res_rx) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let dropped = Arc::new(AtomicBool::new(false));
        let threads = threads.max(1);
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let dropped = dropped.clone();
            scope.spawn(move || loop {
                let next = job_rx.lock().expect("job queue").recv();
                let Ok(job) = next else { return };
                let r = if dropped.load(Ordering::Relaxed) {
                    result(Status::Cancelled, Instant::now())
                } else {
                    run_job(store, &job, rt)
                };
                if res_tx.send((job.job, r)).is_err() {
                    return;
                }
            });
        }
        LocalExecutor {
            capacity: threads,
            serial_device: rt.device.is_accelerator(),
            jobs: Some(job_tx),
            results: res_rx,
            dropped,
        }
    }
}

impl Executor for LocalExecutor {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn serial_device(&self) -> bool {
        self.serial_device
    }
    fn submit(&mut self, job: StageJob) -> Result<(), RunnerError> {
        let tx = self.jobs.as_ref().ok_or(RunnerError::Interrupted)?;
        tx.send(job)
            .map_err(|_| RunnerError::Data("the local executor's workers are gone".into()))
    }
    fn wait_any(&mut self, timeout: Duration) -> Vec<(usize, NodeResult)> {
        let mut out = Vec::new();
        match self.results.recv_timeout(timeout) {
            Ok(r) => out.push(r),
            Err(_) => return out,
        }
        out.extend(self.results.try_iter());
        out
    }
    fn cancel_all(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        // Closing the queue lets the workers return, so the scope ends.
        self.jobs.take();
        self.dropped.store(true, Ordering::Relaxed);
    }
}
