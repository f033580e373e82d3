//! A network namespace of the test's own for one node: no name in `/run/netns`, held by a file
//! descriptor, so it disappears with the test process and the node's processes. Its only
//! interface is `lo`, with 127.0.0.1 and the node's IP; loopback ports of the host (the API
//! server, the EC2 endpoint) are forwarded into it by [`NetNs::forward`], whose listener lives in
//! the namespace while the upstream is dialled from the host's loopback.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result, anyhow};

use crate::process::run_checked;
use crate::tcp_proxy::TcpProxy;

/// A network namespace, alive while this value (or a process in it) is.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

/// Runs `f` on a new thread (a namespace switch affects only the calling thread) and returns
/// its result.
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| anyhow!("a network-namespace thread panicked"))?
        .map_err(anyhow::Error::from)
}

impl NetNs {
    /// A new namespace with `lo` up and `ip`/32 on it (the node's address: the kubelet refuses a
    /// loopback node IP).
    pub fn new(ip: Ipv4Addr) -> Result<NetNs> {
        let file = on_own_thread(|| {
            // SAFETY: unshare only changes this (short-lived) thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            File::open("/proc/thread-self/ns/net")
        })
        .context("unshare(CLONE_NEWNET) (needs root)")?;
        let ns = NetNs { file };
        ns.run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
        ns.run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]))?;
        Ok(ns)
    }

    /// Makes `cmd` start inside the namespace (setns before exec; the mount namespace is the
    /// host's, so the kubelet's and containerd's mounts see each other).
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the descriptor is open in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs a short command inside the namespace; fails with its output if it fails.
    pub fn run(&self, cmd: &mut Command) -> Result<std::process::Output> {
        self.enter_on_exec(cmd);
        run_checked(cmd)
    }

    /// A listener on `addr` inside the namespace.
    pub fn bind(&self, addr: SocketAddr) -> Result<TcpListener> {
        let fd = self.file.try_clone()?;
        on_own_thread(move || {
            // SAFETY: setns only changes this (short-lived) thread's network namespace; the
            // socket stays in the namespace it was created in.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpListener::bind(addr)
        })
        .with_context(|| format!("binding {addr} in a node's network namespace"))
    }

    /// Forwards `127.0.0.1:port` inside the namespace to `127.0.0.1:port` of the host.
    pub fn forward(&self, port: u16) -> Result<TcpProxy> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Ok(TcpProxy::with_listener(self.bind(addr)?, addr))
    }
}
