//! The local executor (`[executor] kind = "local"`, the default): jobs on a
//! pool of threads of this process, on the device this process resolves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mrbm_stage::Device;

use super::{
    DeviceRequest, Executor, ExecutorFlags, ExecutorKind, Placement, RunContext, RunExecutor,
};
use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::kinds::registry::Registry;
use crate::plan::Dag;
use crate::run::device;
use crate::run::exec::{self, RunOptions};
use crate::run::job::{NodeResult, Status};
use crate::run::worker::{result, run_job, Runtime};
use crate::store::hashing::Memo;
use crate::store::Store;

/// `kind = "local"`: it takes no settings of its own.
pub struct Local;

impl ExecutorKind for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn check(&self, settings: &toml::Table) -> Result<(), String> {
        match settings.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("takes no settings (`{k}`)")),
        }
    }
    fn configure(
        &self,
        _settings: &toml::Table,
        _flags: &ExecutorFlags,
    ) -> Result<Box<dyn RunExecutor>, RunnerError> {
        Ok(Box::new(LocalRun { device: None }))
    }
}

/// A local run: the device, once resolved by [`RunExecutor::place`].
struct LocalRun {
    device: Option<Device>,
}

impl RunExecutor for LocalRun {
    fn place(&mut self, request: &DeviceRequest) -> Result<Placement, RunnerError> {
        let d = match &request.key {
            Some(key) => device::resolve_key(key)?,
            None => device::resolve(&request.spec)?,
        };
        let name = d.to_string();
        self.device = Some(d);
        Ok(Placement {
            shown: name.clone(),
            recorded: name,
            checks_memory_here: true,
        })
    }
    fn run(&self, ctx: RunContext) -> Result<(Vec<NodeResult>, Option<String>), RunnerError> {
        let Some(device) = &self.device else {
            return Err(RunnerError::Data(
                "the local executor was asked to run before its device was resolved".into(),
            ));
        };
        let (reg, store, memo) = (ctx.registry, ctx.store, ctx.memo);
        let r = execute(ctx.dag, reg, store, memo, device, ctx.opts, ctx.cancel);
        Ok((r, None))
    }
}

/// The job id a local run records: the Slurm allocation it runs in (`srun
/// mrbm run`, `sbatch` of a script that runs mrbm), if any.
fn allocation_job() -> Option<String> {
    std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty())
}

/// Run the DAG with today's local thread pool ([`LocalExecutor`]): nodes in
/// dependency order, up to `opts.jobs` at a time, accelerator stages one at
/// a time.
pub fn execute(
    dag: &Dag,
    reg: &Registry,
    store: &Store,
    memo: &Memo,
    device: &Device,
    opts: &RunOptions,
    cancel: &AtomicBool,
) -> Vec<NodeResult> {
    let rt = Runtime {
        registry: reg,
        memo,
        device,
        progress: opts.progress.as_ref(),
        cancel,
        job_id: allocation_job(),
    };
    std::thread::scope(|scope| {
        let mut ex = LocalExecutor::start(scope, opts.jobs, store, &rt);
        let sched = exec::Scheduler::new(dag, reg, store, memo, opts, cancel);
        sched.run(&mut ex)
    })
}

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
