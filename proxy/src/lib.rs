//! The Warden data plane: the sidecar's listeners, original destination, protocol detection,
//! mTLS with secure naming, L4 forwarding, per-connection authorization, admin, health,
//! metrics and drain.
//!
//! - [`config`]: the sidecar configuration (YAML + Istio's environment variables);
//! - [`orig_dst`]: `SO_ORIGINAL_DST` behind a trait;
//! - [`registry`]: what outbound knows about destinations (the mesh registry, ready per connection);
//! - [`detect`], [`l4`], [`inbound`], [`outbound`]: the traffic path;
//! - [`cert_source`], [`mesh_config`]: where certificates and mesh config come from;
//! - [`admin`], [`metrics`], [`drain`]: operations;
//! - [`server`]: wires it all and runs until drained.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod balance;
pub mod cert_source;
pub mod config;
pub mod copy;
pub mod detect;
pub mod dial;
pub mod drain;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod l4;
pub mod limits;
pub mod logging;
pub mod mesh_config;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod registry;
pub mod server;
pub mod state;
pub mod worker;

pub use config::SidecarConfig;
pub use server::{Listeners, run};
pub use state::Shared;
