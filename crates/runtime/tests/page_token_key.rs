//! Installing the configured page-token key (what `mesh serve` does before any service starts)
//! changes the key of every token the process writes and reads: a token made under the
//! built-in public key is refused afterwards, tokens under the installed key verify, and a
//! second, different key cannot replace it. Its own test binary: the key is process-wide.

use mesh_runtime::domain::page_token::{decode, encode};
use mesh_runtime::domain::page_token_key::{PageTokenKey, is_installed};

#[test]
fn an_installed_key_replaces_the_built_in_one_for_good() {
    let query = ("stock", "default");
    assert!(!is_installed());
    let public = encode(&("default", "p-1"), &query);

    let key = PageTokenKey::from_text("a-deployment-page-token-key-of-48-characters!!!").unwrap();
    key.clone().install().expect("the first install");
    assert!(is_installed());
    let refused = decode::<(String, String), _>(&public, &query).unwrap_err();
    assert!(
        refused.to_string().contains("altered or not issued"),
        "{refused}"
    );
    let token = encode(&("default", "p-2"), &query);
    assert_eq!(
        decode::<(String, String), _>(&token, &query).unwrap(),
        Some(("default".into(), "p-2".into()))
    );

    key.install().expect("the same key again is fine");
    let other = PageTokenKey::from_text("another-page-token-key-of-at-least-32-bytes").unwrap();
    assert!(other.install().is_err(), "a second key would orphan tokens");
    assert!(decode::<(String, String), _>(&token, &query).is_ok());
}
