//! The access-token verifier every service and the edge use (`mesh_runtime::auth::Verifier`),
//! with one Ed25519 key (`kid` `k1`) and a fixed clock.
//!
//! Input, two forms:
//! - a token as sent (`header.claims.signature`): if it is accepted, its signature must be the
//!   key's own signature of its `header.claims` (Ed25519 signatures are deterministic), so only
//!   a token signed by the key passes;
//! - `{header JSON}\n{claims JSON}`: the target signs these bytes as they are, once with the key
//!   and once with another key under the same `kid`. The other key's token is never accepted;
//!   the key's token is accepted only if its header says EdDSA and the claims have the expected
//!   issuer and audience and are valid at the clock's time, and then the identity is the
//!   token's `sub`.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use mesh_contracts::auth::v1::Jwk;
use mesh_runtime::auth::{Clock, StaticKeys, Verifier, VerifierSettings};

/// The verifier's time: 2027-01-15, so the checked-in seed tokens stay valid.
const NOW: i64 = 1_800_000_000;

#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now_unix(&self) -> i64 {
        NOW
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            x: URL_SAFE_NO_PAD.encode(key().verifying_key().to_bytes()),
            ..Jwk::default()
        };
        Verifier::new(
            Arc::new(StaticKeys::new(&[jwk])),
            VerifierSettings::default(),
        )
        .with_clock(Arc::new(FixedClock))
    })
}

fn token(header: &[u8], claims: &[u8], signer: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = signer.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        let (header, claims) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (data, &b"{}"[..]),
        };
        let forged = token(header, claims, &SigningKey::from_bytes(&[9; 32]));
        let result = mesh_fuzz::block_on(verifier().verify(&forged));
        assert!(result.is_err(), "a token signed by another key: {result:?}");
        let signed = token(header, claims, &key());
        if let Ok(identity) = mesh_fuzz::block_on(verifier().verify(&signed)) {
            let header: serde_json::Value = serde_json::from_slice(header).expect("JSON header");
            let claims: serde_json::Value = serde_json::from_slice(claims).expect("JSON claims");
            let settings = VerifierSettings::default();
            assert_eq!(header["alg"], "EdDSA");
            assert_eq!(header["kid"], "k1");
            assert_eq!(claims["iss"], settings.issuer.as_str());
            assert_eq!(claims["aud"], settings.audience.as_str());
            assert_eq!(claims["sub"], identity.subject.as_str());
            let exp = claims["exp"].as_i64().expect("exp");
            let nbf = claims["nbf"].as_i64().expect("nbf");
            assert!(
                NOW < exp.saturating_add(settings.leeway),
                "expired: {claims}"
            );
            assert!(
                nbf <= NOW.saturating_add(settings.leeway),
                "not yet valid: {claims}"
            );
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if mesh_fuzz::block_on(verifier().verify(text)).is_ok() {
        let (input, signature) = text.rsplit_once('.').expect("a JWT has dots");
        let ours = key().sign(input.as_bytes()).to_bytes();
        let theirs = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('='));
        assert_eq!(
            theirs.as_deref().ok(),
            Some(&ours[..]),
            "accepted a token the key did not sign: {text:?}"
        );
    }
});
