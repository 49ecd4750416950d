//! What the CA publishes over HTTPS on its gRPC port, for proxies and operators:
//!
//! | path | content | type |
//! |---|---|---|
//! | `GET /ca/root-cert.pem` | the trust bundle: every trusted root, active first | `application/x-pem-file` |
//! | `GET /ca/crl.pem` | every CRL to check against (signing CA first), PEM | `application/x-pem-file` |
//! | `GET /ca/crl.der` | the signing CA's CRL, DER | `application/pkix-crl` |
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

/// The published documents.
#[derive(Debug)]
pub struct Published {
    root_pem: ArcSwap<Bytes>,
    crl_pem: ArcSwap<Bytes>,
    crl_der: ArcSwap<Bytes>,
}

impl Published {
    /// Documents to publish.
    pub fn new(root_pem: String, crl_pem: String, crl_der: Vec<u8>) -> Self {
        Self {
            root_pem: ArcSwap::from_pointee(Bytes::from(root_pem)),
            crl_pem: ArcSwap::from_pointee(Bytes::from(crl_pem)),
            crl_der: ArcSwap::from_pointee(Bytes::from(crl_der)),
        }
    }

    /// The trust bundle, PEM.
    pub fn root_pem(&self) -> Bytes {
        Bytes::clone(&self.root_pem.load())
    }

    /// The CRLs, PEM.
    pub fn crl_pem(&self) -> Bytes {
        Bytes::clone(&self.crl_pem.load())
    }

    /// Publishes a new trust bundle.
    pub fn set_root_pem(&self, pem: String) {
        self.root_pem.store(Bytes::from(pem).into());
    }

    /// Publishes new CRLs.
    pub fn set_crls(&self, pem: String, signing_der: Vec<u8>) {
        self.crl_pem.store(Bytes::from(pem).into());
        self.crl_der.store(Bytes::from(signing_der).into());
    }

    /// Answers a request whose path starts with [`PREFIX`].
    pub fn respond<B>(&self, req: &Request<B>) -> Response<tonic::body::Body> {
        let (body, content_type) = match req.uri().path() {
            "/ca/root-cert.pem" => (self.root_pem(), "application/x-pem-file"),
            "/ca/crl.pem" => (self.crl_pem(), "application/x-pem-file"),
            "/ca/crl.der" => (Bytes::clone(&self.crl_der.load()), "application/pkix-crl"),
            _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
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
        let p = Published::new("ROOT".into(), "CRL".into(), vec![1, 2]);
        let get = |path: &str| Request::get(path).body(()).unwrap();
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
