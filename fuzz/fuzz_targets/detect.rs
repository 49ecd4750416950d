//! Fuzz inbound protocol detection and ClientHello ALPN parsing on arbitrary first bytes:
//! never panics, and a decision once made never changes when more bytes arrive (detection
//! peeks at a growing prefix and acts on the first decision).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::detect::{classify, client_hello_alpns};

fuzz_target!(|data: &[u8]| {
    let full = classify(data);
    for n in 0..=data.len().min(40) {
        if let Some(d) = classify(&data[..n]) {
            assert_eq!(full, Some(d), "decision on {n} bytes changed with more data");
            break;
        }
    }
    match client_hello_alpns(data) {
        Ok(alpns) => {
            for p in &alpns {
                assert!(!p.is_empty() && p.len() < 256, "ALPN entries are 1..=255 bytes");
            }
        }
        Err(true) => {
            // More bytes needed: a prefix of it must not have been judged complete.
            for n in 0..data.len().min(64) {
                assert!(!matches!(client_hello_alpns(&data[..n]), Ok(_)));
            }
        }
        Err(false) => {}
    }
});
