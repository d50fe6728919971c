//! Task callbacks: Vidu's signature scheme (verifying Vidu's callbacks, signing relays to teams), and where the
//! gateway may relay.

pub mod hosts;
pub mod signature;
