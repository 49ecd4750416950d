//! The Warden control plane.
//!
//! What istiod does for security: the mesh CA served as Istio's gRPC
//! `istio.v1.auth.IstioCertificateService` on port 15012 over TLS, with the trust bundle and
//! the CRL published over HTTPS on the same port. (The config store, the registry and the push
//! of config to proxies come with later issues.)
//!
//! - [`ControlPlane::open`] loads the state directory ([`ControlConfig`]), then
//!   [`ControlPlane::start`] serves until [`RunningControlPlane::shutdown`].
//! - [`auth`]: caller authentication (service-account tokens, mesh client certificates).
//! - [`service`]: `CreateCertificate` and its error statuses.
//! - [`admin`]: revocation and root rotation from a process beside the control plane.
//! - [`token_key`]: the token-signing key that `warden control token` mints with.
//! - [`client`]: a TLS gRPC client of the service, for tools, tests and benchmarks.
//!
//! The user guide is `docs/control.md`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
mod error;
mod fsutil;
pub mod peer;
pub mod publish;
pub mod push;
pub mod server;
pub mod service;
pub mod serving;
pub mod status;
pub mod store;
pub mod tls;
pub mod token_key;

pub use config::{CaSource, ControlConfig, StatePaths, TokenIssuer};
pub use error::ControlError;
pub use server::{ControlPlane, RunningControlPlane};
