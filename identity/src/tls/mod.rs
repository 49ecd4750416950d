//! Mutual TLS for the mesh: rustls configurations, SPIFFE verifiers and secure naming.
//!
//! - [`WorkloadCredentials`] (our chain and key) and [`TrustBundle`] (mesh roots, CRLs, allowed
//!   trust domains) are checked once when they change;
//! - [`TlsProvider::install`] builds the [`TlsConfigs`] (one server config, one client config per
//!   [`Alpn`] set) and swaps them in atomically; every connection reads the current ones;
//! - [`TlsProvider::accept`] / [`TlsProvider::connect`] run the handshake and return the peer's
//!   verified [`SpiffeId`](crate::SpiffeId); `connect` also checks **secure naming** (the server
//!   must be one of the identities expected for the destination);
//! - failures are [`TlsError`]s; a refused peer certificate is a [`PeerCertError`] naming the
//!   exact reason.
//!
//! rustls with aws-lc-rs; TLS 1.3 only unless [`TlsSettings::allow_tls12`]; X25519MLKEM768 is
//! offered first. See `docs/mtls.md`.

pub mod alpn;
mod config;
mod credentials;
mod error;
mod inplace;
mod provider;
mod verify;

pub use alpn::Alpn;
pub use config::{TlsConfigs, TlsSettings, crypto_provider};
pub(crate) use credentials::pem_certs as credentials_pem_certs;
pub use credentials::{TrustBundle, WorkloadCredentials};
pub use error::{CredentialsError, PeerCertError, Purpose, TlsError};
pub use inplace::{InPlaceTls, RECORDS_AT_ONCE, SLOTS, SendSlots};
pub use provider::{Accepted, ClientTlsStream, InPlaceAccepted, ServerTlsStream, TlsProvider};
pub use verify::{check_secure_naming, peer_identity, peer_identity_checked, spiffe_id_of};
