//! The public port: a TCP relay in front of the gRPC server, so that "stopping the server" can
//! close the listening socket and cut every open connection at once (the client sees its
//! connections drop and new ones refused), and "restarting" can bind the same port again with
//! the data untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Client connections relayed at once (more are closed on accept).
pub const CONNECTIONS_MAX: usize = 256;
/// Pause after a failed accept.
const ACCEPT_RETRY_MS: u64 = 10;

/// A running relay; [`Relay::stop`] ends it.
pub struct Relay {
    kill: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections of `listener` to `backend`.
    pub fn start(listener: TcpListener, backend: SocketAddr) -> Relay {
        let (kill, rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, backend, rx));
        Relay { kill, accept }
    }

    /// Closes the listening socket and every relayed connection; returns once the port is free.
    pub async fn stop(self) {
        self.kill.send_replace(true);
        self.accept.abort();
        let _ = self.accept.await;
    }
}

async fn accept_loop(listener: TcpListener, backend: SocketAddr, mut kill: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::debug!(error = %e, "esdb-fake: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            _ = killed(&mut kill) => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let kill = kill.clone();
        tokio::spawn(async move {
            relay(socket, backend, kill).await;
            drop(permit);
        });
    }
}

async fn relay(mut client: TcpStream, backend: SocketAddr, mut kill: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(backend).await else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = killed(&mut kill) => {}
    }
}

async fn killed(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|k| *k).await;
}
