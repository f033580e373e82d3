//! Child processes that never outlive the test process.
//!
//! Every child is started in its own process group with `PR_SET_PDEATHSIG = SIGKILL`, so that it
//! is killed by the kernel if the test process dies (panic with `panic = abort`, SIGKILL, a
//! timeout of the test runner...). [`ChildGuard`]'s `Drop` stops it in the normal case: SIGTERM
//! to the whole group, a short grace period, then SIGKILL, and reaps it.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. So
//! all children are forked by one harness thread that lives as long as the process: a child
//! started by one test (or stored in a static shared by several tests) is not killed when that
//! test's thread ends.
//!
//! stdout and stderr of each child go to `<log_dir>/<name>.log`; errors about a child that failed
//! to start or died carry the tail of that log.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long a child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How many log lines errors carry.
pub const LOG_TAIL_LINES: usize = 40;

/// A running child process, stopped and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    pid: u32,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to
    /// `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<ChildGuard> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid).
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = spawn_on_harness_thread(cmd).with_context(|| format!("starting {name} ({program})"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            exit: None,
            log_path,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// `Ok` while the child runs; an error with the log tail once it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.exit = Some(status);
        }
        match (&self.exit, &self.child) {
            (None, Some(_)) => Ok(()),
            (Some(status), _) => Err(anyhow!(
                "{} (pid {}) exited with {status}; last lines of {}:\n{}",
                self.name,
                self.pid,
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            )),
            (None, None) => bail!("{} (pid {}) was stopped", self.name, self.pid),
        }
    }

    /// The child's exit status once it has exited (it is reaped then), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exit = child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// An error about this child, carrying its log tail.
    pub fn error(&self, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: {message}; last lines of {}:\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// SIGTERM to the process group, up to [`STOP_GRACE`], then SIGKILL; reaps the child.
    /// Idempotent.
    pub fn stop(&mut self) {
        self.stop_with_grace(STOP_GRACE)
    }

    /// SIGTERM to the process group, up to `grace`, then SIGKILL; reaps the child. Idempotent.
    pub fn stop_with_grace(&mut self, grace: Duration) {
        self.signal_and_reap(Some(grace))
    }

    /// SIGKILL to the process group at once, no SIGTERM first (a crash, an OOM kill: the child
    /// gets no chance to shut down gracefully); reaps the child. Idempotent.
    pub fn kill(&mut self) {
        self.signal_and_reap(None)
    }

    /// SIGTERM and up to `grace` to exit (with `Some`), then SIGKILL; reaps the child.
    fn signal_and_reap(&mut self, grace: Option<Duration>) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.exit.is_some() {
            return; // already reaped: its pid (and so group id) may have been reused
        }
        let pgid = self.pid as libc::pid_t;
        if let Some(grace) = grace {
            // SAFETY: plain syscalls on a process group we created and have not reaped yet.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while !exited_unreaped(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The leader is a zombie at most (not reaped yet), so the group id is still ours: this
        // kills whatever of the group is left, leader included if it ignored SIGTERM.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        self.exit = child.wait().ok();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the harness's spawner thread, which never exits (see the module docs).
fn spawn_on_harness_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the harness spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("harness spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("harness spawner thread is gone"))?
}

/// Whether `pid` (our child) has exited, without reaping it.
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: waitid with WNOWAIT only inspects our own child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc != 0: no such child any more (ECHILD), treat as exited.
        rc != 0 || info.si_pid() != 0
    }
}

/// Whether a process with this pid exists and has not exited (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => match stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) {
            Some(state) => !matches!(state, "Z" | "X" | "x"),
            None => true,
        },
        Err(_) => false,
    }
}

/// The last `lines` lines of a file (at most the last 64 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    };
    read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Polls `probe` every `interval` until it returns `Ok`, failing early with the child's log
/// tail if the child exits, and failing at `timeout` with the last probe error and the log tail.
pub async fn wait_ready<T, F, Fut>(
    child: &mut ChildGuard,
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        child.ensure_running()?;
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(child.error(format!("not {what} after {timeout:?}; last probe error: {last:#}")));
        }
        tokio::time::sleep(interval).await;
    }
}

/// Blocking twin of [`wait_ready`].
pub fn wait_ready_blocking<T>(
    child: &mut ChildGuard,
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        child.ensure_running()?;
        let last = match probe() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(child.error(format!("not {what} after {timeout:?}; last probe error: {last:#}")));
        }
        std::thread::sleep(interval);
    }
}

/// Runs a short-lived helper command to completion, failing with its output if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<std::process::Output> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed with {}:\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
