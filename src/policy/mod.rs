//! Access policy and admission: who may do what, how often, and at what cost.

pub mod access;
pub mod periods;
pub mod resolve;
