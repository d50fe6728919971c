//! `LiveConfig`: the configuration in force, swapped atomically on reload; readers take a cheap snapshot. It also
//! remembers what the last load attempt read, so that one change is one reload whatever announced it.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::{InputDigest, LoadedConfig};

#[derive(Debug)]
pub struct LiveConfig {
    current: RwLock<Arc<LoadedConfig>>,
    attempted: Mutex<Option<InputDigest>>,
}

impl LiveConfig {
    pub fn new(config: LoadedConfig) -> Self {
        Self {
            attempted: Mutex::new(Some(config.inputs)),
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// The configuration in force now. A request keeps the snapshot it started with.
    pub fn current(&self) -> Arc<LoadedConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new (already validated) configuration in force.
    pub fn replace(&self, config: LoadedConfig) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// The inputs of the last load attempted (applied or refused; `None` when the file could not be read).
    /// Holding the guard serializes reloads.
    pub fn attempted(&self) -> MutexGuard<'_, Option<InputDigest>> {
        self.attempted.lock().unwrap_or_else(|p| p.into_inner())
    }
}
