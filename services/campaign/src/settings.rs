//! The campaign service's settings, from `MESH_CAMPAIGN_*` variables, validated when the service
//! is built (an error names the variable).

use std::time::Duration;

pub use mesh_runtime::settings::SettingError;
use mesh_runtime::settings::{Settings, process_env};

/// How long holds live and how often expired ones are released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignSettings {
    /// `MESH_CAMPAIGN_HOLD_TTL` (default 2m): a redemption held by PriceCart with `reserve` is
    /// released when no `order.created` made it a reservation within this time.
    pub hold_ttl: Duration,
    /// `MESH_CAMPAIGN_HOLD_SWEEP` (default 5s): how often expired holds are looked for.
    pub sweep_every: Duration,
}

impl Default for CampaignSettings {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::from_secs(120),
            sweep_every: Duration::from_secs(5),
        }
    }
}

impl CampaignSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let d = Self::default();
        let s = Settings::new(env);
        Ok(Self {
            hold_ttl: s.duration("MESH_CAMPAIGN_HOLD_TTL", d.hold_ttl, false)?,
            sweep_every: s.duration("MESH_CAMPAIGN_HOLD_SWEEP", d.sweep_every, false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::settings::lookup_in;

    #[test]
    fn defaults_and_a_bad_value_named() {
        assert_eq!(
            CampaignSettings::from_lookup(|_| None).unwrap(),
            CampaignSettings::default()
        );
        let vars = [("MESH_CAMPAIGN_HOLD_TTL", "soon")];
        let e = CampaignSettings::from_lookup(lookup_in(&vars)).unwrap_err();
        assert!(e.to_string().contains("MESH_CAMPAIGN_HOLD_TTL"), "{e}");
    }
}
