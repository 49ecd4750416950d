//! The control plane's token-signing key: `<state>/token-signing-key.pem` (PKCS#8, mode 0600,
//! created on first use) and its public half `<state>/token-jwks.json`.
//!
//! `warden control token` signs service-account tokens with it for local meshes and tests; the
//! control plane always trusts it. Whichever of the two runs first creates the key; the other
//! loads it (creation is atomic and never replaces an existing key).

use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use warden_policy::jwt::k8s::{SaTokenSpec, mint};
use warden_policy::jwt::{Algorithm, SigningKey, jwks_json};

use crate::config::StatePaths;
use crate::error::ControlError;
use crate::fsutil::{KEY_MODE, PUBLIC_MODE, create_once, create_private_dir, write_atomic};

/// Loads the token-signing key of a state directory, creating it (ES256) if there is none, and
/// (re)writes its JWKS file when it differs.
pub fn load_or_create(paths: &StatePaths) -> Result<SigningKey, ControlError> {
    create_private_dir(&paths.dir).map_err(|e| ControlError::io("creating", &paths.dir, e))?;
    let key = match std::fs::read_to_string(&paths.token_key) {
        Ok(text) => parse(paths, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fresh = SigningKey::generate(Algorithm::ES256).map_err(|source| {
                ControlError::TokenKey {
                    path: paths.token_key.clone(),
                    source,
                }
            })?;
            let pem = fresh
                .to_pkcs8_pem()
                .map_err(|source| ControlError::TokenKey {
                    path: paths.token_key.clone(),
                    source,
                })?;
            if create_once(&paths.token_key, pem.as_bytes(), KEY_MODE)
                .map_err(|e| ControlError::io("creating", &paths.token_key, e))?
            {
                tracing::info!(file = %paths.token_key.display(), kid = fresh.kid(), "created the token-signing key");
                fresh
            } else {
                // Another process created it first: use theirs.
                let text = std::fs::read_to_string(&paths.token_key)
                    .map_err(|e| ControlError::io("reading", &paths.token_key, e))?;
                parse(paths, &text)?
            }
        }
        Err(e) => return Err(ControlError::io("reading", &paths.token_key, e)),
    };
    write_jwks(paths, &key)?;
    Ok(key)
}

fn parse(paths: &StatePaths, text: &str) -> Result<SigningKey, ControlError> {
    if let Ok(meta) = std::fs::metadata(&paths.token_key)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %paths.token_key.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the token-signing key is readable by other users; it should be mode 0600"
        );
    }
    SigningKey::from_pem(text, None).map_err(|source| ControlError::TokenKey {
        path: paths.token_key.clone(),
        source,
    })
}

/// The JWKS document of the key's public half.
pub fn jwks_document(key: &SigningKey) -> Result<String, ControlError> {
    let jwk = key.public_jwk().map_err(ControlError::Mint)?;
    Ok(jwks_json([jwk]))
}

fn write_jwks(paths: &StatePaths, key: &SigningKey) -> Result<(), ControlError> {
    let doc = jwks_document(key)?;
    if std::fs::read_to_string(&paths.token_jwks).ok().as_deref() != Some(doc.as_str()) {
        write_atomic(&paths.token_jwks, doc.as_bytes(), PUBLIC_MODE)
            .map_err(|e| ControlError::io("writing", &paths.token_jwks, e))?;
    }
    Ok(())
}

/// Mints a service-account token signed with the state directory's key (created if absent),
/// which a control plane running on that state directory accepts.
pub fn mint_token(
    paths: &StatePaths,
    spec: &SaTokenSpec,
    now: SystemTime,
) -> Result<String, ControlError> {
    let key = load_or_create(paths)?;
    mint(&key, spec, now).map_err(ControlError::Mint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_policy::jwt::k8s::SaTokenVerifier;

    #[test]
    fn created_once_then_reloaded_and_minted_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(&dir.path().join("state"));
        let a = load_or_create(&paths).unwrap();
        let b = load_or_create(&paths).unwrap();
        assert_eq!(a.kid(), b.kid(), "the second call loads the same key");
        let mode = std::fs::metadata(&paths.token_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let jwks = std::fs::read_to_string(&paths.token_jwks).unwrap();
        assert!(!jwks.contains("\"d\""), "no private member in the JWKS");
        let verifier = SaTokenVerifier::from_jwks_json(&jwks).unwrap();
        let now = SystemTime::now();
        let token = mint_token(&paths, &SaTokenSpec::new("default", "sleep"), now).unwrap();
        let id = verifier.verify(&token, now).unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("default", "sleep")
        );
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        std::fs::write(&paths.token_key, "not a key").unwrap();
        let err = load_or_create(&paths).unwrap_err().to_string();
        assert!(err.contains("token-signing-key.pem"), "{err}");
    }
}
