//! Following every task the gateway created to its end: what a Vidu answer says about a task (`learn`), the
//! reconciler that queries tasks not heard of lately and releases unknown reservations nobody resolved
//! (`reconciler`), and the relay of state changes to the callers' `callback_url` (`relay`). The decisions are the
//! store's (`state::Lifecycle`); this module feeds it and acts on what it answers.

pub mod learn;
pub mod reconciler;
pub mod relay;
