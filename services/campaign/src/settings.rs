//! The campaign service's settings, from `MESH_CAMPAIGN_*` variables, each declared once, checked
//! before anything binds (every bad one named) and read again when the service is built.

use std::time::Duration;

use mesh_runtime::settings::{ModuleSettings, Setting, Settings, process_env};
pub use mesh_runtime::settings::{SettingError, SettingErrors};

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

const HOLD_TTL: Setting = Setting::duration(
    "MESH_CAMPAIGN_HOLD_TTL",
    "2m",
    "A redemption held by PriceCart with `reserve` is released when no `order.created` made it a reservation within this time.",
);
const HOLD_SWEEP: Setting = Setting::duration(
    "MESH_CAMPAIGN_HOLD_SWEEP",
    "5s",
    "How often expired holds are looked for.",
);

/// The campaign module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[HOLD_TTL, HOLD_SWEEP],
    check: |env| CampaignSettings::from_lookup(env).map(drop),
};

impl CampaignSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// The settings from `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let settings = Self {
            hold_ttl: s.duration(&HOLD_TTL),
            sweep_every: s.duration(&HOLD_SWEEP),
        };
        s.finish(settings)
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
