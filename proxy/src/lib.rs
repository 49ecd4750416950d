//! The Warden data plane.
//!
//! Not yet built: listeners, original destination, protocol detection, mTLS, L4 forwarding,
//! L7 HTTP/1.1 and HTTP/2, gateways, connection pools, admin, health, metrics and drain arrive
//! with the sidecar data plane issue. This crate deliberately exports nothing until then.
#![forbid(unsafe_code)]
