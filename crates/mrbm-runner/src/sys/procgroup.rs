//! A `command` stage's program in a process group of its own, so that
//! everything it starts (a shell's background jobs included) can be
//! signalled at once and nothing outlives the stage or `mrbm`.
//!
//! The process `mrbm` forks becomes the group's leader and a small
//! watchdog; it forks the program, which runs in the same group with a
//! parent-death signal (`PR_SET_PDEATHSIG`: it dies if the watchdog dies).
//! The watchdog ignores the termination signals the group gets, closes
//! every file it inherited (so only the program holds the output pipes),
//! waits for the program and ends as it ended (exit code or signal). At
//! least every 50 ms it checks that `mrbm` is alive: if `mrbm` is gone (even by
//! SIGKILL, which runs no handler), it kills the whole group. A parent-death
//! signal alone would not do: it is not inherited across fork, so a shell's
//! `sleep 1000 &` would live on.
//!
//! On Ctrl-C the stage sends SIGTERM to the group, then SIGKILL after its
//! grace period; when the program ends, whatever it left running in its
//! group is killed before the watchdog is reaped (so the group id cannot
//! have been reused).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

use super::abort;

/// A running program in its own process group (see the module docs).
pub struct Group {
    child: Option<Child>,
    pgid: i32,
}

/// The watchdog's loop, in the forked child before exec (only
/// async-signal-safe calls: the parent has threads). Never returns.
fn watchdog(program: libc::pid_t, mrbm: libc::pid_t) -> ! {
    // SAFETY: raw system calls on our own process; no allocation, no locks.
    unsafe {
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(s, libc::SIG_IGN);
        }
        // Let go of the output pipes and of the exec-status pipe `spawn`
        // reads (the program's exec closes its copy).
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        // SIGCHLD blocked and waited for: the program's end is seen at once,
        // mrbm's every 50 ms.
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        loop {
            let mut st: libc::c_int = 0;
            let r = libc::waitpid(program, &mut st, libc::WNOHANG);
            if r == program {
                if libc::WIFEXITED(st) {
                    libc::_exit(libc::WEXITSTATUS(st));
                }
                if libc::WIFSIGNALED(st) {
                    let sig = libc::WTERMSIG(st);
                    let no_core = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                    libc::signal(sig, libc::SIG_DFL);
                    libc::kill(libc::getpid(), sig);
                    libc::_exit(128 + sig);
                }
                continue; // stopped or continued: still running
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
            if libc::getppid() != mrbm {
                // mrbm is gone: the whole group goes (this process too).
                libc::kill(0, libc::SIGKILL);
                libc::_exit(137);
            }
            libc::sigtimedwait(&chld, std::ptr::null_mut(), &nap);
        }
    }
}

impl Group {
    /// Start `cmd` in a new process group under a watchdog.
    pub fn spawn(cmd: &mut Command) -> io::Result<Group> {
        // SAFETY: the closure runs in the forked child and makes only
        // async-signal-safe system calls (setpgid, fork, prctl, getpid,
        // getppid, and the watchdog's), as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                let mrbm = libc::getppid();
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let me = libc::getpid();
                match libc::fork() {
                    -1 => Err(io::Error::last_os_error()),
                    0 => {
                        // The program: it dies with its watchdog.
                        libc::prctl(
                            libc::PR_SET_PDEATHSIG,
                            libc::SIGKILL as libc::c_ulong,
                            0,
                            0,
                            0,
                        );
                        if libc::getppid() != me {
                            libc::_exit(137);
                        }
                        Ok(())
                    }
                    program => watchdog(program, mrbm),
                }
            });
        }
        let child = cmd.spawn()?;
        let pgid = child.id() as i32;
        abort::add_group(pgid);
        Ok(Group {
            child: Some(child),
            pgid,
        })
    }

    /// The program's stdout and stderr pipes (when piped), once.
    pub fn take_pipes(
        &mut self,
    ) -> (
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        match &mut self.child {
            Some(c) => (c.stdout.take(), c.stderr.take()),
            None => (None, None),
        }
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Has the program ended? (Its watchdog is not reaped yet, so the
    /// group id stays ours.)
    pub fn ended(&self) -> io::Result<bool> {
        let Some(c) = &self.child else {
            return Ok(true);
        };
        // SAFETY: waitid with WNOWAIT only reads the child's state into `info`.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                c.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(info.si_pid() != 0)
        }
    }

    /// Send `sig` to the whole group.
    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            abort::signal_group(self.pgid, sig);
        }
    }

    /// Kill whatever is left in the group and reap the watchdog: the
    /// program's exit status.
    pub fn finish(mut self) -> io::Result<ExitStatus> {
        self.reap()
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already reaped"))?;
        abort::signal_group(self.pgid, libc::SIGKILL);
        let st = c.wait();
        abort::remove_group(self.pgid);
        st
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.reap();
        }
    }
}
