//! Traffic capture for Warden sidecars.
//!
//! Not yet built: nat-table rules compatible with istio-iptables, applied in one
//! `iptables-restore` transaction, verified and cleaned up, arrive with the traffic-capture issue.
//! This crate deliberately exports nothing until then.
#![forbid(unsafe_code)]
