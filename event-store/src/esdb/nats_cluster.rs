//! A JetStream cluster of real `nats-server` processes on loopback ports (issue 17), for the
//! tests and `accrual bench cluster`.
//!
//! Each node `nN` gets its own directory under the caller's: `nN.conf` (its config),
//! `nN/server.log` (the server's log, plus anything it printed before opening it) and `nN/js`
//! (its JetStream store, kept across [`NatsCluster::kill`] and [`NatsCluster::restart`]).
//! Everything here is bounded: a start or restart gives up after [`START_TIMEOUT_MS`], and one
//! question to one node after [`ASK_TIMEOUT_MS`] (a paused node accepts the TCP connection and
//! then says nothing).

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

/// Bound on [`NatsCluster::start`] and [`NatsCluster::restart`] (JetStream's meta leader
/// included).
pub const START_TIMEOUT_MS: u64 = 30_000;
/// Bound on one question to one node (connect, then one request).
pub const ASK_TIMEOUT_MS: u64 = 2_000;
/// JetStream cluster (route) name of a cluster of more than one node.
pub const CLUSTER_NAME: &str = "accrual";
/// Pause between two looks at a node that is not ready yet.
const POLL_INTERVAL_MS: u64 = 100;
/// Lines of a node's log an error shows.
const LOG_TAIL_LINES: usize = 40;
/// Starts tried when a port picked as free was taken before the server bound it.
const START_ATTEMPTS_MAX: usize = 3;

/// One `nats-server` process and what it needs to start again.
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Running and not stopped: a node one may ask something.
    fn answers(&self) -> bool {
        self.child.is_some() && !self.paused
    }
}

/// A JetStream cluster of `nats-server` processes on loopback ports, for tests and
/// `accrual bench cluster`.
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// The server binary: `$ACCRUAL_NATS_SERVER`, else `nats-server` found on PATH; None when
    /// neither.
    pub fn find_server() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("ACCRUAL_NATS_SERVER").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|p| p.is_file())
    }

    /// Starts `nodes` servers (1, 3 or 5) named n1..nN under `dir` (owned by the caller), each
    /// with its own client and route port on 127.0.0.1, `max_payload: 8MB` (one Accrual event
    /// may be 1 MiB) and routes to all the others; a single node has no cluster block. Returns
    /// once every node accepts clients and JetStream answers (so the meta leader is elected),
    /// at most [`START_TIMEOUT_MS`] later; else an error with the tail of the failing node's log.
    pub async fn start(binary: &Path, nodes: usize, dir: &Path) -> Result<NatsCluster, String> {
        if ![1, 3, 5].contains(&nodes) {
            return Err(format!("a NATS cluster of {nodes} nodes: use 1, 3 or 5"));
        }
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::spawn_all(binary, nodes, dir)?;
            match cluster.wait_ready().await {
                Ok(()) => return Ok(cluster),
                // A port picked as free was taken by someone else before the server bound it.
                Err(e) if attempt < START_ATTEMPTS_MAX && e.contains("address already in use") => {
                    tracing::warn!("nats cluster: port taken, starting again: {e}");
                    drop(cluster);
                    for i in 0..nodes {
                        let node_dir = dir.join(format!("n{}", i + 1));
                        std::fs::remove_dir_all(&node_dir).map_err(|e| {
                            format!("removing {} to start again: {e}", node_dir.display())
                        })?;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes every node's config and starts its process (not waiting for anything).
    fn spawn_all(binary: &Path, nodes: usize, dir: &Path) -> Result<NatsCluster, String> {
        let ports = free_ports(nodes * 2)?;
        let (client_ports, route_ports) = ports.split_at(nodes);
        let mut cluster = NatsCluster { binary: binary.to_owned(), nodes: Vec::new() };
        for i in 0..nodes {
            let name = format!("n{}", i + 1);
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
            let log = node_dir.join("server.log");
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{}\nmax_payload: 8MB\nlog_file: {}\n\
                 jetstream {{ store_dir: {} }}\n",
                client_ports[i],
                quoted(&log)?,
                quoted(&node_dir.join("js"))?,
            );
            if nodes > 1 {
                let routes: Vec<String> = (0..nodes)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats-route://127.0.0.1:{}", route_ports[j]))
                    .collect();
                text.push_str(&format!(
                    "cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    route_ports[i],
                    routes.join(", ")
                ));
            }
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text)
                .map_err(|e| format!("writing {}: {e}", config.display()))?;
            cluster.nodes.push(Node {
                name,
                client_port: client_ports[i],
                config,
                log,
                child: None,
                paused: false,
            });
        }
        for i in 0..nodes {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Starts node `i`'s process; what it prints goes to its log file too.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("opening {}: {e}", node.log.display()))?;
        let err = out.try_clone().map_err(|e| format!("opening {}: {e}", node.log.display()))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {} ({}): {e}", node.name, self.binary.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Waits until every node accepts clients and JetStream answers on it.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        for i in 0..self.nodes.len() {
            loop {
                // Any node's exit (a port taken, a bad config) fails the start at once.
                for j in 0..self.nodes.len() {
                    self.check_alive(j)?;
                }
                let last = match ask_account(&self.nodes[i].url()).await {
                    Ok(()) => break,
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(self.failure(i, &format!("JetStream did not answer: {last}")));
                }
                tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            }
        }
        Ok(())
    }

    /// An error when node `i`'s process has exited.
    fn check_alive(&mut self, i: usize) -> Result<(), String> {
        let exited = match self.nodes[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => format!("exited ({status})"),
            Some(Err(e)) => format!("cannot be waited for: {e}"),
            Some(Ok(None)) => return Ok(()),
            None => "is not running".to_owned(),
        };
        self.nodes[i].child = None;
        Err(self.failure(i, &exited))
    }

    /// `what` went wrong with node `i`, with the tail of its log.
    fn failure(&self, i: usize, what: &str) -> String {
        let node = &self.nodes[i];
        format!(
            "nats-server {} on port {}: {what}; last lines of {}:\n{}",
            node.name,
            node.client_port,
            node.log.display(),
            log_tail(&node.log)
        )
    }

    /// Comma-separated client URLs of all nodes: "nats://127.0.0.1:P1,nats://127.0.0.1:P2,...".
    pub fn url(&self) -> String {
        self.nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    /// Client URL of node `i` (0-based).
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Server name of node `i` ("n1"...).
    pub fn name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    /// `kill -9` node `i` (nothing if it is down already); its store is kept.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Stops node `i` (SIGSTOP): its sockets stay open but it answers nothing.
    pub fn pause(&mut self, i: usize) {
        if self.nodes[i].answers() && self.signal(i, "-STOP") {
            self.nodes[i].paused = true;
        }
    }

    /// Lets a paused node `i` go on (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].paused && self.signal(i, "-CONT") {
            self.nodes[i].paused = false;
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to node `i` with kill(1); false if that failed.
    fn signal(&self, i: usize, signal: &str) -> bool {
        let Some(child) = &self.nodes[i].child else { return false };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => true,
            other => {
                tracing::warn!("nats cluster: kill {signal} {}: {other:?}", self.nodes[i].name);
                false
            }
        }
    }

    /// Starts node `i` again after [`NatsCluster::kill`] (same config, ports and store) and waits,
    /// at most [`START_TIMEOUT_MS`], until it accepts clients. Nothing if it is running.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)?;
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            self.check_alive(i)?;
            let last = match connect(&self.nodes[i].url()).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.failure(i, &format!("not accepting clients: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Started and not killed (a paused node still counts as running).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Index of the node leading JetStream stream `stream` (stream info's cluster leader, asked
    /// of the running, unpaused nodes in turn, each for at most [`ASK_TIMEOUT_MS`]); None when no
    /// node answers or none knows a leader.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let (_, info) = self.stream_info(stream).await.ok()?;
        let leader = info.cluster.and_then(|c| c.leader);
        match leader {
            Some(name) => self.nodes.iter().position(|n| n.name == name),
            // A single server without a cluster block may not name itself.
            None if self.nodes.len() == 1 => Some(0),
            None => None,
        }
    }

    /// Waits, at most `timeout`, until stream `stream` has a leader and every replica on a
    /// running, unpaused node is current and not offline (a killed or paused node is not
    /// waited for). The error says what was seen last.
    pub async fn wait_stream_healthy(&self, stream: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match self.stream_info(stream).await {
                Ok((node, info)) => match self.unhealthy(&info) {
                    None => return Ok(()),
                    Some(what) => format!("asked {}: {what}", self.nodes[node].name),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "stream {stream} not healthy after {} ms: {seen}",
                    timeout.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// What keeps a stream from being healthy, None if nothing.
    fn unhealthy(&self, info: &jetstream::stream::Info) -> Option<String> {
        let Some(cluster) = &info.cluster else {
            return (self.nodes.len() > 1).then(|| "no cluster info".to_owned());
        };
        let Some(leader) = &cluster.leader else {
            return Some("no leader".to_owned());
        };
        let lagging: Vec<String> = cluster
            .replicas
            .iter()
            .filter(|p| self.nodes.iter().any(|n| n.name == p.name && n.answers()))
            .filter(|p| !p.current || p.offline)
            .map(|p| {
                format!(
                    "{} (current {}, offline {}, lag {:?})",
                    p.name, p.current, p.offline, p.lag
                )
            })
            .collect();
        if lagging.is_empty() {
            None
        } else {
            Some(format!("leader {leader}, not current: {}", lagging.join(", ")))
        }
    }

    /// Stream info from the first running, unpaused node that gives it, with that node's index.
    async fn stream_info(&self, stream: &str) -> Result<(usize, jetstream::stream::Info), String> {
        let mut errors = Vec::new();
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.answers()) {
            match ask_stream_info(&node.url(), stream).await {
                Ok(info) => return Ok((i, info)),
                Err(e) => errors.push(format!("{}: {e}", node.name)),
            }
        }
        if errors.is_empty() {
            return Err("no node is running".to_owned());
        }
        Err(errors.join("; "))
    }
}

impl Drop for NatsCluster {
    /// `kill -9` every node and waits for it (a paused one is continued first).
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (all held at once while picking, so distinct).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("picking a free port on 127.0.0.1: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("picking a free port on 127.0.0.1: {e}"))
}

/// `path` as a quoted NATS config string.
fn quoted(path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or_else(|| format!("path is not UTF-8: {}", path.display()))?;
    if text.contains(['"', '\\', '\n']) {
        return Err(format!("path unusable in a nats-server config: {text:?}"));
    }
    Ok(format!("\"{text}\""))
}

/// The last [`LOG_TAIL_LINES`] lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return format!("(cannot read: {e})"),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// `question` (connect, then one request), given at most [`ASK_TIMEOUT_MS`].
async fn bounded<T>(
    what: String,
    question: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(ASK_TIMEOUT_MS), question).await {
        Ok(answer) => answer.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {ASK_TIMEOUT_MS} ms")),
    }
}

/// A client of the one server at `url` (no reconnecting: the caller asks once and drops it).
async fn connect(url: &str) -> Result<async_nats::Client, String> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(ASK_TIMEOUT_MS))
        .max_reconnects(Some(1));
    bounded(format!("connecting to {url}"), async {
        options.connect(url).await.map_err(|e| e.to_string())
    })
    .await
}

/// Whether JetStream answers an account info request on the server at `url`.
async fn ask_account(url: &str) -> Result<(), String> {
    bounded(format!("JetStream account info from {url}"), async {
        let client = connect(url).await?;
        jetstream::new(client).query_account().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
}

/// Info of stream `stream` as the server at `url` gives it.
async fn ask_stream_info(url: &str, stream: &str) -> Result<jetstream::stream::Info, String> {
    bounded(format!("stream {stream} info from {url}"), async {
        let client = connect(url).await?;
        let found = jetstream::new(client).get_stream(stream).await;
        found.map(|s| s.cached_info().clone()).map_err(|e| e.to_string())
    })
    .await
}
