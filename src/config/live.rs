//! `LiveConfig`: the configuration in force, swapped atomically on reload; readers take a cheap snapshot.

use std::sync::{Arc, RwLock};

use super::LoadedConfig;

#[derive(Debug)]
pub struct LiveConfig(RwLock<Arc<LoadedConfig>>);

impl LiveConfig {
    pub fn new(config: LoadedConfig) -> Self {
        Self(RwLock::new(Arc::new(config)))
    }

    /// The configuration in force now. A request keeps the snapshot it started with.
    pub fn current(&self) -> Arc<LoadedConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new (already validated) configuration in force.
    pub fn replace(&self, config: LoadedConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}
