//! The two in-place copies chained as a client and a server sidecar run them: app -> plain
//! socket -> records sealed in lent slots (outbound) -> records opened in place -> plain
//! socket -> app (inbound), with a reply after the half-close, over real sockets and mTLS.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_identity::SpiffeId;
use warden_proxy::copy::{copy_bidirectional_in_place, copy_bidirectional_sealing};

async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

#[tokio::test]
async fn two_in_place_sidecars_carry_bulk_both_ways_with_half_close() {
    let mesh = support::Mesh::new();
    let (client_tls, server_tls) = (mesh.provider("client"), mesh.provider("server"));
    let server_id = SpiffeId::istio(
        &warden_identity::TrustDomain::default(),
        support::NS,
        "server",
    )
    .unwrap();
    // app <-> outbound sidecar, sidecar <-> sidecar (mTLS), inbound sidecar <-> upstream app.
    let (mut app, mut out_plain) = tcp_pair().await;
    let (c, s) = tcp_pair().await;
    let (mut in_plain, mut upstream) = tcp_pair().await;
    let (a, b) = tokio::join!(
        server_tls.accept_in_place(s),
        client_tls.connect_in_place(
            c,
            std::slice::from_ref(&server_id),
            warden_identity::tls::Alpn::Tcp
        )
    );
    let (mut in_tls, _, _) = a.unwrap();
    let (mut out_tls, peer) = b.unwrap();
    assert_eq!(peer, server_id);
    let outbound =
        tokio::spawn(async move { copy_bidirectional_sealing(&mut out_plain, &mut out_tls).await });
    let inbound =
        tokio::spawn(async move { copy_bidirectional_in_place(&mut in_tls, &mut in_plain).await });

    let up = support::payload(9 << 20);
    let sent = up.clone();
    let client = tokio::spawn(async move {
        // Odd-sized writes, so reads land partial records between full ones.
        for chunk in sent.chunks(100_003) {
            app.write_all(chunk).await.unwrap();
        }
        app.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        back
    });
    let mut got = Vec::new();
    upstream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), up.len());
    assert!(got == up, "the upstream read other bytes than the app sent");
    let reply = support::payload(3 << 20);
    upstream.write_all(&reply).await.unwrap();
    upstream.shutdown().await.unwrap();
    let back = client.await.unwrap();
    assert!(
        back == reply,
        "the app read other bytes than the upstream sent"
    );
    let (out_up, out_down) = outbound.await.unwrap().unwrap();
    let (in_up, in_down) = inbound.await.unwrap().unwrap();
    assert_eq!((out_up, out_down), (up.len() as u64, reply.len() as u64));
    assert_eq!((in_up, in_down), (up.len() as u64, reply.len() as u64));
}
