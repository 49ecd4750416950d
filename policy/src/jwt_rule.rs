//! The `jwtRules[]` entry of an Istio `RequestAuthentication`, as written in YAML.
//!
//! Shared by the resource parser (which validates it) and the JWT validator (which compiles it).

use serde::{Deserialize, Serialize};

/// One `jwtRules[]` entry (`security.istio.io` `JWTRule`), field names as in Istio's YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `issuer`: the token's `iss` (required).
    #[serde(default)]
    pub issuer: String,
    /// `audiences`: accepted `aud` values; empty means any audience is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// `jwksUri`: where the caller fetches the JSON Web Key Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// `jwks`: an inline JSON Web Key Set (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// `fromHeaders`: where to look for the token in request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// `fromParams`: query parameters that may carry the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// `fromCookies`: cookies that may carry the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`: header that receives the base64url payload of a valid token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// `outputClaimToHeaders`: claims copied to request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `forwardOriginalToken`: keep the token header for the app (default false: it is removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// `timeout`: the JWKS fetch timeout (a duration string such as `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A `fromHeaders[]` entry: header `name`, and a `prefix` stripped before the token (e.g. `Bearer `).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name (case-insensitive).
    #[serde(default)]
    pub name: String,
    /// Prefix to strip, matched exactly.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// An `outputClaimToHeaders[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header to set.
    #[serde(default)]
    pub header: String,
    /// Claim name (a top-level claim; nested claims use `.`-separated paths).
    #[serde(default)]
    pub claim: String,
}
