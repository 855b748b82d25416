//! The TCP side: a hand-written accept loop over hyper instead of
//! `axum::serve`, because the simulator must be able to kill connections —
//! one at a time for the reset fault, all at once for [`crate::SimServer::shutdown`].
//!
//! Killing sets `SO_LINGER` to zero before the socket closes, so the peer sees
//! a TCP reset rather than an orderly end of stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Lets a handler reset the connection its request arrived on.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(Arc<Notify>);

impl ConnHandle {
    /// Resets the connection; the handler should then never answer.
    pub fn reset(&self) {
        self.0.notify_one();
    }
}

/// Binds 127.0.0.1:`port` with `SO_REUSEADDR`, so a restarted server can take
/// over the port of one that was just shut down.
pub(crate) fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

/// Accepts connections until `shutdown` turns true, then closes the listener
/// and resets every open connection before returning.
pub(crate) async fn accept_loop(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let for_conns = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(stream, router.clone(), for_conns.clone()));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = stopped(&mut shutdown) => break,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve_conn(stream: TcpStream, router: Router, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // A second descriptor for the same socket, so the linger option can be
    // set after hyper has taken ownership of the stream.
    let Ok(twin) = socket2::SockRef::from(&stream).try_clone() else {
        return;
    };
    let kill = Arc::new(Notify::new());
    let handle = ConnHandle(kill.clone());
    let stopping = shutdown.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        // A request that arrives once shutdown has begun (on a kept-alive connection not yet reset) gets a reset,
        // never an answer: a real server that dies answers nothing, and a client checking whether it is still
        // up must not be told yes.
        let stopped = *stopping.borrow();
        let (handle, mut router) = (handle.clone(), router.clone());
        async move {
            if stopped {
                handle.reset();
                std::future::pending::<()>().await;
            }
            tower_service::Service::call(&mut router, req).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => return,
        _ = kill.notified() => {}
        _ = stopped(&mut shutdown) => {}
    }
    // Whichever descriptor closes last now sends the reset.
    let _ = twin.set_linger(Some(Duration::ZERO));
}

/// Resolves once shutdown is requested (or the server is dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Dropping the guard here keeps the caller's future `Send`.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
