//! The proxy side of Warden's configuration push (`warden.config.v1.ConfigDiscovery`).
//!
//! [`ConfigSubscriber::spawn`] connects to the control plane over mesh mTLS (the workload's
//! certificate from a [`TlsProvider`], the control plane checked against the expected identities),
//! registers, and for every snapshot: validates it with the caller's function (the proxy parses it
//! with `warden_policy::config::ConfigBundle`), publishes the result on a
//! [`tokio::sync::watch`] and ACKs, or NACKs with the validation error and keeps the last good
//! config. On any failure it reconnects with exponential backoff and jitter, keeping the last good
//! config; after a control plane restart it resyncs (the control plane sends a full snapshot on
//! every new stream).
//!
//! This crate does not depend on `warden-policy`: validation is the caller's function.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::codegen::http::Uri;

use crate::proto::config::config_discovery_client::ConfigDiscoveryClient;
use crate::proto::config::{
    Ack, ConfigSnapshot, ProxyType, Registration, SubscribeRequest, subscribe_request,
};
use crate::spiffe::SpiffeId;
use crate::tls::{Alpn, ClientTlsStream, TlsError, TlsProvider};

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// The control plane's `host:port` (e.g. `127.0.0.1:15012`).
    pub address: String,
    /// Identities the control plane may present (secure naming), e.g.
    /// `spiffe://cluster.local/ns/istio-system/sa/istiod`.
    pub control_plane_identities: Vec<SpiffeId>,
    /// Pod (instance) name.
    pub pod_name: String,
    /// The workload's namespace (must match its certificate).
    pub namespace: String,
    /// The workload's labels.
    pub labels: HashMap<String, String>,
    /// Sidecar or gateway.
    pub proxy_type: ProxyType,
    /// The proxy's version.
    pub proxy_version: String,
    /// First reconnect delay (doubled up to `backoff_max`, with ±25 % jitter).
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Timeout for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
}

impl SubscriberOptions {
    /// Options with Warden's defaults: sidecar, backoff 100 ms .. 15 s, connect timeout 5 s.
    pub fn new(
        address: impl Into<String>,
        control_plane_identities: Vec<SpiffeId>,
        namespace: impl Into<String>,
    ) -> Self {
        SubscriberOptions {
            address: address.into(),
            control_plane_identities,
            pod_name: String::new(),
            namespace: namespace.into(),
            labels: HashMap::new(),
            proxy_type: ProxyType::Sidecar,
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A validated config and the snapshot version it came from.
#[derive(Debug)]
pub struct Versioned<T> {
    /// The control plane's version.
    pub version: u64,
    /// The validated config.
    pub config: T,
}

/// Connection state, for readiness and admin pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStatus {
    /// Whether a stream is established.
    pub connected: bool,
    /// The last error (connection or stream), if any since the last good snapshot.
    pub last_error: Option<String>,
    /// The last snapshot rejected (NACKed): version and reason.
    pub last_nack: Option<(u64, String)>,
    /// Number of (re)connections made.
    pub connects: u64,
}

/// A running subscription. Dropping it stops the task.
#[derive(Debug)]
pub struct ConfigSubscriber<T> {
    config: watch::Receiver<Option<Arc<Versioned<T>>>>,
    status: watch::Receiver<SubscriberStatus>,
    task: JoinHandle<()>,
}

impl<T> Drop for ConfigSubscriber<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Validate<T> = Arc<dyn Fn(&ConfigSnapshot) -> Result<T, String> + Send + Sync>;

impl<T: Send + Sync + 'static> ConfigSubscriber<T> {
    /// Starts subscribing. `validate` turns a snapshot into the proxy's config or says why it is
    /// rejected (the reason is sent back in the NACK).
    pub fn spawn(
        tls: TlsProvider,
        options: SubscriberOptions,
        validate: impl Fn(&ConfigSnapshot) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        let (config_tx, config) = watch::channel(None);
        let (status_tx, status) = watch::channel(SubscriberStatus::default());
        let task = tokio::spawn(run(tls, options, Arc::new(validate), config_tx, status_tx));
        ConfigSubscriber {
            config,
            status,
            task,
        }
    }

    /// The current config (`None` until the first valid snapshot), updated on every change.
    pub fn config(&self) -> watch::Receiver<Option<Arc<Versioned<T>>>> {
        self.config.clone()
    }

    /// The current config now.
    pub fn current(&self) -> Option<Arc<Versioned<T>>> {
        self.config.borrow().clone()
    }

    /// Connection state.
    pub fn status(&self) -> watch::Receiver<SubscriberStatus> {
        self.status.clone()
    }
}

async fn run<T: Send + Sync + 'static>(
    tls: TlsProvider,
    options: SubscriberOptions,
    validate: Validate<T>,
    config_tx: watch::Sender<Option<Arc<Versioned<T>>>>,
    status_tx: watch::Sender<SubscriberStatus>,
) {
    let mut delay = options.backoff_initial;
    loop {
        status_tx.send_modify(|s| s.connects += 1);
        let received_any = match session(&tls, &options, &validate, &config_tx, &status_tx).await {
            Ok(received) => {
                status_tx.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some("stream closed by the control plane".into());
                });
                received
            }
            Err((received, e)) => {
                tracing::warn!(address = %options.address, error = %e, "config stream failed; keeping the last good config");
                status_tx.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(e);
                });
                received
            }
        };
        if received_any {
            delay = options.backoff_initial;
        }
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(options.backoff_max);
    }
}

/// ±25 % jitter.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// One stream. Returns whether at least one snapshot was received, and the error.
async fn session<T: Send + Sync + 'static>(
    tls: &TlsProvider,
    options: &SubscriberOptions,
    validate: &Validate<T>,
    config_tx: &watch::Sender<Option<Arc<Versioned<T>>>>,
    status_tx: &watch::Sender<SubscriberStatus>,
) -> Result<bool, (bool, String)> {
    let connector = Connector {
        tls: tls.clone(),
        address: options.address.clone(),
        expected: Arc::from(options.control_plane_identities.clone()),
        timeout: options.connect_timeout,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", options.address))
        .map_err(|e| (false, format!("bad control plane address: {e}")))?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            (
                false,
                format!("cannot connect to {}: {}", options.address, chain(&e)),
            )
        })?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<SubscribeRequest>(16);
    let current_version = config_tx.borrow().as_ref().map_or(0, |c| c.version);
    let registration = Registration {
        pod_name: options.pod_name.clone(),
        namespace: options.namespace.clone(),
        labels: options.labels.clone(),
        proxy_type: options.proxy_type as i32,
        proxy_version: options.proxy_version.clone(),
        current_version,
    };
    // The channel has room: this cannot fail before the receiver is dropped.
    let _ = tx
        .send(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Registration(registration)),
        })
        .await;
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            (
                false,
                format!("subscribe refused: {:?}: {}", s.code(), s.message()),
            )
        })?
        .into_inner();
    status_tx.send_modify(|s| s.connected = true);
    let mut received = false;
    loop {
        let snapshot = match stream.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(received),
            Err(s) => {
                return Err((
                    received,
                    format!("stream error: {:?}: {}", s.code(), s.message()),
                ));
            }
        };
        received = true;
        let ack = match validate(&snapshot) {
            Ok(config) => {
                tracing::info!(version = snapshot.version, "applied config snapshot");
                config_tx.send_replace(Some(Arc::new(Versioned {
                    version: snapshot.version,
                    config,
                })));
                status_tx.send_modify(|s| s.last_error = None);
                Ack {
                    version: snapshot.version,
                    nonce: snapshot.nonce.clone(),
                    error: String::new(),
                }
            }
            Err(error) => {
                tracing::warn!(version = snapshot.version, %error, "rejected config snapshot; keeping the last good config");
                status_tx.send_modify(|s| s.last_nack = Some((snapshot.version, error.clone())));
                Ack {
                    version: snapshot.version,
                    nonce: snapshot.nonce.clone(),
                    error,
                }
            }
        };
        if tx
            .send(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Ack(ack)),
            })
            .await
            .is_err()
        {
            return Err((received, "request stream closed".into()));
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Dials the control plane over mesh mTLS (tower service for tonic).
#[derive(Clone)]
struct Connector {
    tls: TlsProvider,
    address: String,
    expected: Arc<[SpiffeId]>,
    timeout: Duration,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<ClientTlsStream<TcpStream>>, TlsError>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<ClientTlsStream<TcpStream>>;
    type Error = TlsError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let dial = async {
                let tcp = TcpStream::connect(&this.address)
                    .await
                    .map_err(TlsError::from_io)?;
                let _ = tcp.set_nodelay(true);
                let (stream, _peer) = this.tls.connect(tcp, &this.expected, Alpn::Http2).await?;
                Ok(TokioIo::new(stream))
            };
            match tokio::time::timeout(this.timeout, dial).await {
                Ok(r) => r,
                Err(_) => Err(TlsError::from_io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect and handshake timed out",
                ))),
            }
        })
    }
}
