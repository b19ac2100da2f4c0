//! A server under load: one axum router on its own thread and its own one-worker
//! tokio runtime (its accept loop and connections all on that worker), with each
//! connection's peer address, as the examples serve.

use std::net::SocketAddr;
use std::time::Duration;

/// Serves until dropped. Not a graceful stop: a client's idle keep-alive
/// connection (a gRPC channel on a runtime that is not polled between runs) would
/// hold a graceful one open; dropping the runtime ends the server and its
/// connections.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(router: axum::Router) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            // Spawned, not run by `block_on`, so that the accept loop too runs on the worker.
            let serving = rt.spawn(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
                .unwrap();
            });
            rt.block_on(async {
                tokio::select! {
                    _ = serving => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
