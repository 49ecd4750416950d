//! Fuzz SPIFFE ID and trust-domain parsing: never panics, and whatever parses is canonical
//! (it prints back to itself and parses again to the same value), has a valid trust domain and a
//! path that starts with `/` without empty, `.` or `..` segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s, "a parsed ID prints back to its input");
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID parses again");
        assert_eq!(again, id);
        let td = TrustDomain::new(id.trust_domain_name()).expect("its trust domain is valid");
        assert_eq!(td.as_str(), id.trust_domain_name());
        let path = id.path();
        if !path.is_empty() {
            assert!(path.starts_with('/'), "path {path:?}");
            for seg in path[1..].split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "segment {seg:?} in {s:?}");
            }
        }
    }
    if let Ok(td) = TrustDomain::new(s) {
        let id = td.id();
        assert_eq!(id.trust_domain_name(), td.as_str());
        assert_eq!(SpiffeId::parse(id.as_str()).expect("td id parses"), id);
    }
});
