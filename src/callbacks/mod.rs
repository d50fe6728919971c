//! Task callbacks: Vidu's signature scheme, shared by verifying Vidu's callbacks and signing relays to teams.

pub mod signature;
