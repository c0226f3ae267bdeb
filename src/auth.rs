//! Who a request is for. In `trusted-header` mode the `Homeport-User` header names the user (only
//! the pod's own containers reach the loopback listener); in `jwt` mode a bearer token is verified
//! with the pinned algorithm, expiry and clock-skew leeway, and its claims name the user and,
//! optionally, the home region and shard.

use http::HeaderMap;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, JwtConfig};
use crate::types::UserId;

pub const USER_HEADER: &str = "homeport-user";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// The home region claimed by a verified token, if the token carries one.
    pub region_claim: Option<String>,
    /// The home shard (cell) claimed by a verified token, if the token carries one.
    pub shard_claim: Option<String>,
    /// The user's country from a verified token (`jwt.country_claim`), for placement by country.
    pub country_claim: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing identity: send the Homeport-User header")]
    MissingHeader,
    #[error("missing credentials: send Authorization: Bearer <JWT>")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid user id: {0}")]
    InvalidUser(String),
}

pub fn identify(auth: &AuthConfig, headers: &HeaderMap) -> Result<Identity, AuthError> {
    match auth {
        AuthConfig::TrustedHeader => {
            let value = headers.get(USER_HEADER).ok_or(AuthError::MissingHeader)?;
            let text = value
                .to_str()
                .map_err(|_| AuthError::InvalidUser("Homeport-User is not visible ASCII".into()))?;
            let user = UserId::parse(text).map_err(AuthError::InvalidUser)?;
            Ok(Identity {
                user,
                region_claim: None,
                shard_claim: None,
                country_claim: None,
            })
        }
        AuthConfig::Jwt(jwt) => {
            let value = headers
                .get(http::header::AUTHORIZATION)
                .ok_or(AuthError::MissingToken)?;
            let text = value.to_str().map_err(|_| AuthError::MissingToken)?;
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or(AuthError::MissingToken)?;
            verify(jwt, token.trim())
        }
    }
}

/// What an operator must know about how tokens are checked, one line each, for `homeport check`
/// and the startup log: claims that are accepted whatever they say because nothing is configured
/// to compare them with.
pub fn notes(auth: &AuthConfig) -> Vec<String> {
    let AuthConfig::Jwt(jwt) = auth else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if jwt.audience.is_none() {
        out.push(
            "jwt.audience is not set: the aud claim is not checked, so a token the same issuer \
             signed for another service is accepted"
                .to_string(),
        );
    }
    if jwt.issuer.is_none() {
        out.push(
            "jwt.issuer is not set: the iss claim is not checked, so any token signed with the \
             configured key(s) is accepted"
                .to_string(),
        );
    }
    out
}

/// Verifies a JWT and extracts the identity claims.
pub fn verify(jwt: &JwtConfig, token: &str) -> Result<Identity, AuthError> {
    let header = decode_header(token).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
    if header.alg != jwt.algorithm {
        return Err(AuthError::InvalidToken(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let mut validation = Validation::new(jwt.algorithm);
    validation.leeway = jwt.leeway.as_secs();
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_nbf = true;
    if let Some(iss) = &jwt.issuer {
        validation.set_issuer(&[iss]);
    }
    match &jwt.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let keys = jwt
        .keys
        .iter()
        .filter(|(kid, _)| header.kid.is_none() || kid.is_none() || *kid == header.kid);
    let mut last = AuthError::InvalidToken("no key matches the token's kid".into());
    for (_, key) in keys {
        match decode::<Map<String, Value>>(token, key, &validation) {
            Ok(data) => return identity_from_claims(jwt, &data.claims),
            Err(e) => last = AuthError::InvalidToken(e.to_string()),
        }
    }
    Err(last)
}

fn identity_from_claims(
    jwt: &JwtConfig,
    claims: &Map<String, Value>,
) -> Result<Identity, AuthError> {
    let user = match claims.get(&jwt.user_claim) {
        Some(Value::String(s)) => UserId::parse(s).map_err(AuthError::InvalidUser)?,
        Some(_) => {
            return Err(AuthError::InvalidToken(format!(
                "claim {} is not a string",
                jwt.user_claim
            )));
        }
        None => {
            return Err(AuthError::InvalidToken(format!(
                "claim {} is missing",
                jwt.user_claim
            )));
        }
    };
    let region_claim = string_claim(claims, &jwt.region_claim)?;
    let shard_claim = string_claim(claims, &jwt.shard_claim)?;
    let country_claim = match &jwt.country_claim {
        Some(name) => string_claim(claims, name)?,
        None => None,
    };
    Ok(Identity {
        user,
        region_claim,
        shard_claim,
        country_claim,
    })
}

/// An optional claim that must be a string when present.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::InvalidToken(format!(
            "claim {name} is not a string"
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            algorithm: Algorithm::HS256,
            keys: vec![(None, DecodingKey::from_secret(SECRET))],
            user_claim: "sub".into(),
            region_claim: "region".into(),
            shard_claim: "shard".into(),
            country_claim: Some("country".into()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: Value, alg: Algorithm, secret: &[u8]) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn unchecked_audience_and_issuer_are_reported() {
        let notes = super::notes(&AuthConfig::Jwt(Box::new(config())));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("jwt.audience is not set"), "{notes:?}");
        assert!(notes[1].starts_with("jwt.issuer is not set"), "{notes:?}");
        let mut c = config();
        c.audience = Some("homeport".into());
        c.issuer = Some("https://issuer.example".into());
        assert!(super::notes(&AuthConfig::Jwt(Box::new(c))).is_empty());
        assert!(super::notes(&AuthConfig::TrustedHeader).is_empty());
    }

    #[test]
    fn valid_token_names_user_and_region() {
        let t = token(
            json!({"sub": "u1", "region": "eu", "shard": "eu-2", "country": "DE", "exp": now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(
            verify(&config(), &t).unwrap(),
            Identity {
                user: UserId::parse("u1").unwrap(),
                region_claim: Some("eu".into()),
                shard_claim: Some("eu-2".into()),
                country_claim: Some("DE".into()),
            }
        );
    }

    #[test]
    fn forged_expired_and_confused_tokens_are_rejected() {
        let forged = token(
            json!({"sub": "u1", "exp": now() + 60}),
            Algorithm::HS256,
            b"another-secret-another-secret-xx",
        );
        assert!(verify(&config(), &forged).is_err());
        let expired = token(
            json!({"sub": "u1", "exp": now() - 3600}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(verify(&config(), &expired).is_err());
        let other_alg = token(
            json!({"sub": "u1", "exp": now() + 60}),
            Algorithm::HS384,
            SECRET,
        );
        assert!(verify(&config(), &other_alg).is_err());
        let no_exp = token(json!({"sub": "u1"}), Algorithm::HS256, SECRET);
        assert!(verify(&config(), &no_exp).is_err());
        assert!(verify(&config(), "not.a.jwt").is_err());
        // alg=none with an empty signature.
        assert!(verify(&config(), "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.").is_err());
    }

    #[test]
    fn within_leeway_is_accepted() {
        let t = token(
            json!({"sub": "u1", "exp": now() - 10}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(verify(&config(), &t).is_ok());
    }

    #[test]
    fn trusted_header_mode() {
        let mut h = HeaderMap::new();
        assert_eq!(
            identify(&AuthConfig::TrustedHeader, &h),
            Err(AuthError::MissingHeader)
        );
        h.insert(USER_HEADER, "alice".parse().unwrap());
        assert_eq!(
            identify(&AuthConfig::TrustedHeader, &h)
                .unwrap()
                .user
                .as_str(),
            "alice"
        );
    }
}
