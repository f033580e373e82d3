//! A loopback TCP forwarder whose link a test can cut: the fault suite puts it between the
//! operator and the API server to model network partitions.
//!
//! [`TcpProxy`] listens on `127.0.0.1:<ephemeral port>` and forwards bytes, untouched, to an
//! upstream address (TLS passes through: the client still verifies the upstream's certificate,
//! so a kubeconfig pointing at the proxy needs the server certificate to name `127.0.0.1`, which
//! the control plane's does). Like the EC2 double, it runs on its own thread with its own Tokio
//! runtime, so it keeps forwarding while a test blocks, whatever runtime flavour the test uses.
//!
//! Its [`ProxyMode`] can be switched at any time:
//!
//! - [`ProxyMode::Pass`]: forward in both directions.
//! - [`ProxyMode::Reset`]: abort every open connection with a TCP RST (`SO_LINGER` 0, both the
//!   client's and the upstream's side), and reset every new connection right after accepting it.
//!   Clients see `ECONNRESET` (a crashed peer, a middlebox dropping state).
//! - [`ProxyMode::Hang`]: keep every connection open but forward nothing, in either direction;
//!   new connections are accepted and the upstream is not dialled. Clients see their requests go
//!   unanswered until their own timeouts fire (a partition: packets dropped, no RST, no FIN).
//!
//! Going from `Hang` back to `Pass` resumes the held connections (what a healed partition does
//! to TCP connections whose peers have not given up): bytes the client sent during the hang are
//! delivered then, even when the client has closed the connection meanwhile, as TCP would
//! deliver them. So a request that timed out in a hang may still reach the server after it;
//! going through `Reset` before `Pass` drops the held connections and their bytes instead.
//!
//! [`write_proxied_kubeconfig`] (or `ControlPlane::kubeconfig_via`) writes a copy of a kubeconfig
//! that talks to the API server through a proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::Kubeconfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};

/// What the proxy does with the bytes and connections it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward in both directions.
    Pass,
    /// Abort every connection with a TCP RST, open ones and new ones.
    Reset,
    /// Keep connections open, forward nothing; new connections are accepted and held.
    Hang,
}

/// Shared between the test and the proxy's thread.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicUsize,
}

/// A running proxy. Dropping it stops it (open connections are closed).
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a proxy on `127.0.0.1:0` to `upstream`, in [`ProxyMode::Pass`], on its own thread.
    /// The socket is bound before it returns. Panics if it cannot bind (test setup).
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("tcp proxy: binding 127.0.0.1:0");
        TcpProxy::with_listener(listener, upstream)
    }

    /// Like [`TcpProxy::start`] on a listener the caller bound (e.g. inside another network
    /// namespace: the socket stays there while the upstream is dialled from this one).
    pub fn with_listener(listener: std::net::TcpListener, upstream: SocketAddr) -> TcpProxy {
        listener
            .set_nonblocking(true)
            .expect("tcp proxy: non-blocking listener");
        let addr = listener.local_addr().expect("tcp proxy: local address");
        let (mode, mode_rx) = watch::channel(ProxyMode::Pass);
        let counters = Arc::new(Counters::default());
        let link = Link {
            upstream,
            mode: mode_rx,
            counters: counters.clone(),
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("tcp proxy: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(accept_loop(listener, link, stopped));
                // Dropping the runtime here cancels the connections' tasks, closing their sockets.
            })
            .expect("tcp proxy: spawning the proxy thread");
        TcpProxy {
            addr,
            upstream,
            mode,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The address clients connect to: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode; it applies to open connections at once (within a scheduling tick).
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// How many connections the proxy has accepted so far (reset and held ones included).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// How many accepted connections are still open (being forwarded, held, or dialling).
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// [`write_proxied_kubeconfig`] through this proxy.
    pub fn write_kubeconfig(&self, kubeconfig: &Path, out: &Path) -> Result<()> {
        write_proxied_kubeconfig(kubeconfig, self.addr, out)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes to `out` (mode 0600) a copy of `kubeconfig` (YAML or JSON) whose current context's
/// cluster `server` is `<scheme>://127.0.0.1:<proxy port>` (scheme and path kept), e.g.
/// `https://127.0.0.1:41234`. Certificates and credentials are copied unchanged; relative file
/// references are made absolute. Fails when the current context (or, without one, the only
/// cluster) cannot be found or has no `server`.
pub fn write_proxied_kubeconfig(kubeconfig: &Path, proxy: SocketAddr, out: &Path) -> Result<()> {
    let mut config =
        Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cluster_name = match &config.current_context {
        Some(current) => config
            .contexts
            .iter()
            .find(|c| &c.name == current)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .with_context(|| format!("{}: no context {current:?}", kubeconfig.display()))?,
        None if config.clusters.len() == 1 => config.clusters[0].name.clone(),
        None => anyhow::bail!("{}: no current-context to choose a cluster by", kubeconfig.display()),
    };
    let server = config
        .clusters
        .iter_mut()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_mut())
        .and_then(|c| c.server.as_mut())
        .with_context(|| format!("{}: cluster {cluster_name:?} has no server", kubeconfig.display()))?;
    *server = repoint(server, proxy)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("writing {}", out.display()))?;
    file.write_all(&serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// `scheme://host:port/path` with `host:port` replaced by the proxy's address.
fn repoint(server: &str, proxy: SocketAddr) -> Result<String> {
    let (scheme, rest) = server
        .split_once("://")
        .with_context(|| format!("server {server:?} is not a URL"))?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    Ok(format!("{scheme}://{proxy}{path}"))
}

/// What every connection task needs.
#[derive(Clone, Debug)]
struct Link {
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
}

async fn accept_loop(listener: std::net::TcpListener, link: Link, mut stopped: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tcp proxy: listener: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _)) => {
                link.counters.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(link.clone().serve(client));
            }
            Err(e) => {
                // E.g. out of file descriptors: keep the listener, try again shortly.
                eprintln!("tcp proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> OpenGuard {
        counters.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(counters.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Link {
    /// One accepted connection, from accept to close.
    async fn serve(self, mut client: TcpStream) {
        let _open = OpenGuard::new(&self.counters);
        let _ = client.set_nodelay(true);
        let mut mode = self.mode.clone();
        // A held connection dials the upstream only once the link passes (a partition would not
        // let the SYN through either); a reset one never does.
        if wait_for_pass(&mut mode).await.is_err() {
            return reset(client);
        }
        let dialled = tokio::select! {
            dialled = TcpStream::connect(self.upstream) => dialled,
            _ = until_reset(&mut mode) => return reset(client),
        };
        // An upstream that refuses (e.g. a restarting API server): the client sees a reset.
        let Ok(mut upstream) = dialled else {
            return reset(client);
        };
        let _ = upstream.set_nodelay(true);
        let outcome = {
            let (client_read, client_write) = client.split();
            let (upstream_read, upstream_write) = upstream.split();
            tokio::try_join!(
                pump(client_read, upstream_write, self.mode.clone()),
                pump(upstream_read, client_write, self.mode.clone()),
            )
        };
        // A reset (or an error on either side, e.g. the upstream's own RST) aborts both sides;
        // two clean half-closes end the connection normally.
        if outcome.is_err() {
            reset(client);
            reset(upstream);
        }
    }
}

/// Copies `from` to `to` while the link passes; forwards a half-close. Fails on a reset or an
/// IO error.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<ProxyMode>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_for_pass(&mut mode).await?;
        // Reading is cancel-safe: a mode change while waiting loses no bytes.
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            changed = mode.changed() => {
                changed.map_err(|_| aborted())?;
                continue;
            }
        };
        if n == 0 {
            return to.shutdown().await;
        }
        // Bytes read just before a hang are held until the link passes again.
        wait_for_pass(&mut mode).await?;
        tokio::select! {
            written = to.write_all(&buf[..n]) => written?,
            _ = until_reset(&mut mode) => return Err(aborted()),
        }
    }
}

/// Returns once the mode is `Pass`; fails once it is `Reset` (or the proxy is gone).
async fn wait_for_pass(mode: &mut watch::Receiver<ProxyMode>) -> std::io::Result<()> {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Pass => return Ok(()),
            ProxyMode::Reset => return Err(aborted()),
            ProxyMode::Hang => {}
        }
        mode.changed().await.map_err(|_| aborted())?;
    }
}

/// Returns once the mode is `Reset`.
async fn until_reset(mode: &mut watch::Receiver<ProxyMode>) {
    loop {
        let current = *mode.borrow_and_update();
        if current == ProxyMode::Reset || mode.changed().await.is_err() {
            return;
        }
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "reset by the tcp proxy")
}

/// Closes `stream` with a TCP RST instead of a FIN (`SO_LINGER` 0).
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use super::*;

    /// An echo server on loopback (a thread per connection); counts the connections it got.
    fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the echo server");
        let addr = listener.local_addr().expect("echo server address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn connect(proxy: &TcpProxy) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(proxy.addr()).expect("connecting to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
    }

    /// Sends `msg` and expects it echoed within 5 s.
    fn round_trip(stream: &mut std::net::TcpStream, msg: &[u8]) {
        stream.write_all(msg).expect("writing through the proxy");
        expect_bytes(stream, msg);
    }

    fn expect_bytes(stream: &mut std::net::TcpStream, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        stream.read_exact(&mut got).expect("reading the echo through the proxy");
        assert_eq!(got, want);
    }

    /// Nothing arrives within `wait`.
    fn expect_silence(stream: &mut std::net::TcpStream, wait: Duration) {
        stream.set_read_timeout(Some(wait)).expect("read timeout");
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected no bytes while hanging, got {other:?}"),
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
    }

    /// The next read fails with ECONNRESET (not a clean EOF, not a timeout).
    fn expect_reset(stream: &mut std::net::TcpStream) {
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected a connection reset, got {other:?}"),
        }
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn passes_hangs_resumes_resets_and_passes_again() {
        let (echo, upstream_connections) = echo_server();
        let proxy = TcpProxy::start(echo);
        assert_eq!(proxy.mode(), ProxyMode::Pass);

        // Pass: a round trip through the proxy.
        let mut first = connect(&proxy);
        round_trip(&mut first, b"ping");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(upstream_connections.load(Ordering::SeqCst), 1);

        // Hang: the open connection carries nothing; a new one is accepted, the upstream is
        // not dialled, and it carries nothing either.
        proxy.set_mode(ProxyMode::Hang);
        first.write_all(b"held").expect("writing while hanging");
        expect_silence(&mut first, Duration::from_millis(300));
        let mut second = connect(&proxy);
        second.write_all(b"queued").expect("writing while hanging");
        expect_silence(&mut second, Duration::from_millis(300));
        wait_until("the second connection to be accepted", || proxy.accepted() == 2);
        assert_eq!(
            upstream_connections.load(Ordering::SeqCst),
            1,
            "dialled upstream while hanging"
        );

        // Pass again: the held bytes are delivered, both connections work.
        proxy.set_mode(ProxyMode::Pass);
        expect_bytes(&mut first, b"held");
        expect_bytes(&mut second, b"queued");
        round_trip(&mut first, b"again");
        assert_eq!(upstream_connections.load(Ordering::SeqCst), 2);

        // Reset: open connections are aborted with an RST, new ones right after accept.
        proxy.set_mode(ProxyMode::Reset);
        expect_reset(&mut first);
        expect_reset(&mut second);
        let mut third = connect(&proxy);
        expect_reset(&mut third);
        wait_until("the reset connections to close", || proxy.open_connections() == 0);
        assert_eq!(proxy.accepted(), 3);
        assert_eq!(
            upstream_connections.load(Ordering::SeqCst),
            2,
            "dialled upstream while resetting"
        );

        // Pass after a reset: new connections work.
        proxy.set_mode(ProxyMode::Pass);
        let mut fourth = connect(&proxy);
        round_trip(&mut fourth, b"pong");
        assert_eq!(proxy.accepted(), 4);
    }

    #[test]
    fn a_refused_upstream_resets_the_client_and_drop_stops_the_proxy() {
        // A port nothing listens on: bind, note it, close.
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let proxy = TcpProxy::start(closed);
        let mut client = connect(&proxy);
        expect_reset(&mut client);
        let addr = proxy.addr();
        drop(proxy);
        // The listener is gone: connecting is refused (in a thread, so that a hang fails the
        // test instead of blocking it).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::net::TcpStream::connect(addr).map(|_| ()));
        });
        let connected = rx.recv_timeout(Duration::from_secs(5)).expect("connect hung");
        assert!(connected.is_err(), "the proxy still accepts after drop");
    }

    #[test]
    fn writes_a_kubeconfig_that_points_at_the_proxy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let original = dir.path().join("kubeconfig");
        let yaml = "\
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster:
    server: https://10.0.0.1:6443
- name: test
  cluster:
    server: https://127.0.0.1:6443/prefix
    certificate-authority-data: Q0EtREFUQQ==
users:
- name: admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
";
        std::fs::write(&original, yaml).expect("writing the kubeconfig");
        let proxy_addr: SocketAddr = "127.0.0.1:41234".parse().expect("an address");
        let copy = dir.path().join("proxied");
        write_proxied_kubeconfig(&original, proxy_addr, &copy).expect("writing the proxied kubeconfig");

        let written = Kubeconfig::read_from(&copy).expect("reading it back");
        let server = |name: &str| {
            written
                .clusters
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())
        };
        assert_eq!(server("test").as_deref(), Some("https://127.0.0.1:41234/prefix"));
        assert_eq!(
            server("other").as_deref(),
            Some("https://10.0.0.1:6443"),
            "another cluster changed"
        );
        let cluster = written
            .clusters
            .iter()
            .find(|c| c.name == "test")
            .and_then(|c| c.cluster.clone());
        assert_eq!(
            cluster.and_then(|c| c.certificate_authority_data).as_deref(),
            Some("Q0EtREFUQQ==")
        );
        let text = std::fs::read_to_string(&copy).expect("reading the copy");
        assert!(text.contains("S0VZ"), "the client key was not copied: {text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // No server to repoint: an error, not a panic.
        std::fs::write(&original, "apiVersion: v1\nkind: Config\ncurrent-context: none\n").expect("writing");
        assert!(write_proxied_kubeconfig(&original, proxy_addr, &copy).is_err());
    }
}
