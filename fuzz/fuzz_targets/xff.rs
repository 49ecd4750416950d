//! Fuzz the gateway's X-Forwarded-For handling (the client address AuthorizationPolicy's
//! `remoteIpBlocks` sees): never panics, and the answer is either the connection's peer or an
//! address written in the headers, never anything else.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use warden_proxy::gateway::http::remote_ip;

fuzz_target!(|data: &[u8]| {
    let Some((&hops, rest)) = data.split_first() else {
        return;
    };
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut headers = http::HeaderMap::new();
    // Several header lines: split the input at 0xff bytes.
    for part in rest.split(|b| *b == 0xff) {
        if let Ok(v) = http::HeaderValue::from_bytes(part) {
            headers.append("x-forwarded-for", v);
        }
    }
    let got = remote_ip(&headers, usize::from(hops % 8), peer);
    if got != peer {
        let text: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect();
        assert!(
            text.iter().any(|e| e.parse::<IpAddr>().ok() == Some(got)),
            "{got} is neither the peer nor in {text:?}"
        );
    }
});
