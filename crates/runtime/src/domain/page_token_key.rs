//! The key page tokens are HMAC-checked with ([`super::page_token`]).
//!
//! `MESH_PAGE_TOKEN_KEY` is a declared setting ([`PAGE_TOKEN_KEY`]) read and checked with the
//! rest of the process configuration, before anything binds ([`PageTokenKey::read`], called by
//! `MeshConfig::from_args`): a key that is too short, too long or wrapped in whitespace is named
//! in the one configuration error. The binary then installs the checked key for the process
//! ([`PageTokenKey::install`]) before any service starts. A process that installs none (unit
//! tests, tools) uses a built-in key that is public: tokens are then checksummed, not secret,
//! and a token from one deployment verifies on any other.
//!
//! Every replica of a service must have the same key, or a token from one replica is refused
//! by the next (the Helm chart sets it from its Secret for every service).

use std::fmt;
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

use crate::settings::{Setting, SettingErrors, Settings};

/// `MESH_PAGE_TOKEN_KEY`.
pub const PAGE_TOKEN_KEY: Setting = Setting::secret(
    "MESH_PAGE_TOKEN_KEY",
    "The key page tokens are HMAC-checked with: 32 to 1024 characters without surrounding whitespace (e.g. `openssl rand -base64 48`), the same on every replica (the Helm chart sets it from its Secret). Unset: a built-in public key (tokens are checksummed, not secret; mesh serve warns).",
);

/// The shortest key accepted, in bytes (a random 32-character text carries well over 128 bits).
pub const MIN_LEN: usize = 32;
/// The longest key accepted, in bytes.
pub const MAX_LEN: usize = 1024;

/// The text the built-in key is derived from; refused as a configured key since it is public.
const BUILT_IN: &str = "mesh page token v1 (set MESH_PAGE_TOKEN_KEY for a secret key)";

static INSTALLED: OnceLock<PageTokenKey> = OnceLock::new();

/// A checked page-token key: SHA-256 of the configured text. Its `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct PageTokenKey([u8; 32]);

impl fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageTokenKey(<redacted>)")
    }
}

impl PageTokenKey {
    /// The built-in public key, used until a configured one is installed.
    pub fn built_in() -> Self {
        Self(Sha256::digest(BUILT_IN.as_bytes()).into())
    }

    /// The key from configured `text`, or why it is refused.
    pub fn from_text(text: &str) -> Result<Self, String> {
        if text.trim() != text {
            return Err(
                "has whitespace at its start or end (a newline from the file it came from?); every replica must see the same bytes".into(),
            );
        }
        if text.len() < MIN_LEN {
            return Err(format!(
                "too short ({} bytes): at least {MIN_LEN} random characters, e.g. `openssl rand -base64 48`",
                text.len()
            ));
        }
        if text.len() > MAX_LEN {
            return Err(format!("longer than {MAX_LEN} bytes"));
        }
        if text == BUILT_IN {
            return Err("is the public built-in key; choose a random one".into());
        }
        Ok(Self(Sha256::digest(text.as_bytes()).into()))
    }

    /// Reads [`PAGE_TOKEN_KEY`] through `settings`: `None` when unset (the built-in key) or
    /// refused (the refusal is recorded there, the value never printed).
    pub fn read<F: Fn(&str) -> Option<String>>(settings: &mut Settings<F>) -> Option<Self> {
        settings.parse(&PAGE_TOKEN_KEY, Self::from_text)
    }

    /// [`PageTokenKey::read`] through `env` alone.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, SettingErrors> {
        let mut settings = Settings::new(env);
        let key = Self::read(&mut settings);
        settings.finish(key)
    }

    /// Makes this the key of every page token the process writes and reads from now on. Once
    /// per process: installing a different key after the first fails (tokens already handed
    /// out would stop verifying); installing the same key again is fine.
    pub fn install(self) -> Result<(), KeyAlreadyInstalled> {
        let installed = INSTALLED.get_or_init(|| self.clone());
        if *installed == self {
            Ok(())
        } else {
            Err(KeyAlreadyInstalled)
        }
    }

    /// The key bytes the HMAC is keyed with.
    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// [`PageTokenKey::install`] was called with a different key after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a different page-token key is already installed in this process")]
pub struct KeyAlreadyInstalled;

/// The installed key, or the built-in one when none is.
pub(super) fn current() -> &'static PageTokenKey {
    static BUILT_IN_KEY: OnceLock<PageTokenKey> = OnceLock::new();
    INSTALLED
        .get()
        .unwrap_or_else(|| BUILT_IN_KEY.get_or_init(PageTokenKey::built_in))
}

/// Whether a configured key is installed (`false`: the built-in public key is in use).
pub fn is_installed() -> bool {
    INSTALLED.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::lookup_in;

    const GOOD: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

    #[test]
    fn unset_means_the_built_in_key() {
        assert_eq!(PageTokenKey::from_env(|_: &str| None), Ok(None));
    }

    #[test]
    fn a_random_key_of_32_bytes_or_more_is_taken() {
        let key = PageTokenKey::from_env(lookup_in(&[("MESH_PAGE_TOKEN_KEY", GOOD)]))
            .unwrap()
            .unwrap();
        assert_ne!(key, PageTokenKey::built_in());
        assert_eq!(key, PageTokenKey::from_text(GOOD).unwrap());
        assert_eq!(format!("{key:?}"), "PageTokenKey(<redacted>)");
    }

    #[test]
    fn bad_keys_are_refused_naming_the_variable_without_printing_it() {
        let long = "k".repeat(MAX_LEN + 1);
        let with_newline = format!("{GOOD}\n");
        for (value, why) in [
            ("short-key", "too short"),
            (long.as_str(), "longer than"),
            (with_newline.as_str(), "whitespace"),
            (BUILT_IN, "built-in"),
        ] {
            let e =
                PageTokenKey::from_env(lookup_in(&[("MESH_PAGE_TOKEN_KEY", value)])).unwrap_err();
            assert_eq!(e.0[0].variable, "MESH_PAGE_TOKEN_KEY");
            assert_eq!(e.0[0].value, "<redacted>");
            assert!(e.to_string().contains(why), "{value:?}: {e}");
        }
    }
}
