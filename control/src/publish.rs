//! What the CA publishes over HTTPS on its gRPC port, for proxies and operators:
//!
//! | path | content | type |
//! |---|---|---|
//! | `GET /ca/root-cert.pem` | the trust bundle: every trusted root, active first | `application/x-pem-file` |
//! | `GET /ca/crl.pem` | every CRL to check against (signing CA first), PEM | `application/x-pem-file` |
//! | `GET /ca/crl.der` | the signing CA's CRL, DER | `application/pkix-crl` |
//!
//! When the CA cannot sign a CRL (a plugin intermediate whose keyUsage lacks cRLSign, as
//! Istio's tools/certs make them), the CRL paths answer 503 with the reason; revocation is
//! still enforced at issuance and at the TLS handshake.
//!
//! The documents are rendered when they change (by the control plane's maintenance loop), so a
//! request only clones a reference-counted buffer. `HEAD` is answered too; other methods get
//! 405, other paths 404 (gRPC requests, `content-type: application/grpc`, go to the service).

use std::convert::Infallible;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

/// The path prefix of the published documents.
pub const PREFIX: &str = "/ca/";

/// The CRLs as published, or why there are none.
#[derive(Debug)]
enum CrlDocs {
    Ready { pem: Bytes, der: Bytes },
    Unavailable(Bytes),
}

/// The published documents.
#[derive(Debug)]
pub struct Published {
    root_pem: ArcSwap<Bytes>,
    crl: ArcSwap<CrlDocs>,
}

impl Published {
    /// Documents to publish; no CRL yet.
    pub fn new(root_pem: String) -> Self {
        Self {
            root_pem: ArcSwap::from_pointee(Bytes::from(root_pem)),
            crl: ArcSwap::from_pointee(CrlDocs::Unavailable(Bytes::from_static(
                b"no CRL has been generated yet\n",
            ))),
        }
    }

    /// The trust bundle, PEM.
    pub fn root_pem(&self) -> Bytes {
        Bytes::clone(&self.root_pem.load())
    }

    /// The CRLs, PEM (`None` when no CRL can be published).
    pub fn crl_pem(&self) -> Option<Bytes> {
        match &**self.crl.load() {
            CrlDocs::Ready { pem, .. } => Some(pem.clone()),
            CrlDocs::Unavailable(_) => None,
        }
    }

    /// Publishes a new trust bundle.
    pub fn set_root_pem(&self, pem: String) {
        self.root_pem.store(Bytes::from(pem).into());
    }

    /// Publishes new CRLs: all of them as PEM, the signing CA's as DER.
    pub fn set_crls(&self, pem: String, signing_der: Vec<u8>) {
        self.crl.store(
            CrlDocs::Ready {
                pem: Bytes::from(pem),
                der: Bytes::from(signing_der),
            }
            .into(),
        );
    }

    /// Publishes no CRL (the CA cannot sign one); the CRL paths answer 503 with `reason`.
    pub fn set_crl_unavailable(&self, reason: &str) {
        self.crl
            .store(CrlDocs::Unavailable(Bytes::from(format!("no CRL: {reason}\n"))).into());
    }

    /// Answers a request whose path starts with [`PREFIX`].
    pub fn respond<B>(&self, req: &Request<B>) -> Response<tonic::body::Body> {
        let crl = self.crl.load();
        let (body, content_type) = match (req.uri().path(), &**crl) {
            ("/ca/root-cert.pem", _) => (self.root_pem(), "application/x-pem-file"),
            ("/ca/crl.pem", CrlDocs::Ready { pem, .. }) => (pem.clone(), "application/x-pem-file"),
            ("/ca/crl.der", CrlDocs::Ready { der, .. }) => (der.clone(), "application/pkix-crl"),
            ("/ca/crl.pem" | "/ca/crl.der", CrlDocs::Unavailable(why)) => {
                let mut resp = Response::new(boxed(why.clone()));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return resp;
            }
            _ => return not_found(),
        };
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                return resp;
            }
        };
        let len = body.len();
        let body = if head { Bytes::new() } else { body };
        let mut resp = Response::new(boxed(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        resp
    }
}

/// The answer to a plain HTTP request outside [`PREFIX`] (gRPC requests go to the service).
pub fn not_found() -> Response<tonic::body::Body> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn boxed(bytes: Bytes) -> tonic::body::Body {
    tonic::body::Body::new(Full::new(bytes).map_err(|e: Infallible| match e {}))
}

fn plain(status: StatusCode, text: &'static str) -> Response<tonic::body::Body> {
    let mut resp = Response::new(boxed(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response<tonic::body::Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn routes_methods_and_updates() {
        let p = Published::new("ROOT".into());
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(
            p.respond(&get("/ca/crl.pem")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        p.set_crls("CRL".into(), vec![1, 2]);
        let r = p.respond(&get("/ca/root-cert.pem"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/x-pem-file");
        assert_eq!(body_of(r).await, "ROOT");
        assert_eq!(body_of(p.respond(&get("/ca/crl.der"))).await, &[1u8, 2][..]);
        p.set_crls("CRL2".into(), vec![3]);
        assert_eq!(body_of(p.respond(&get("/ca/crl.pem"))).await, "CRL2");
        assert_eq!(p.respond(&get("/ca/nope")).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/ca/crl.pem").body(()).unwrap();
        assert_eq!(p.respond(&post).status(), StatusCode::METHOD_NOT_ALLOWED);
        let head = Request::head("/ca/crl.pem").body(()).unwrap();
        let r = p.respond(&head);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "4");
        assert!(body_of(r).await.is_empty());
    }
}
