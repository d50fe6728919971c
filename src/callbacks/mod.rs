//! Task callbacks: Vidu's signature scheme (verifying Vidu's callbacks, signing relays to teams), and where the
//! gateway may relay.

/// The key the sandbox signs its callbacks with (the gateway verifies sandbox callbacks with it; a real Vidu
/// signs with the enterprise key).
pub const SANDBOX_KEY: &str = "vidu-sandbox-callback-key";

pub mod hosts;
pub mod signature;
