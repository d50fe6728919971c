//! Policy: who may do what (access rules, off-peak modes), which limits apply to a request (resolved from
//! users over teams over defaults), the calendar periods budgets are counted in, and `Denial`, the refusal
//! policy and admission give in domain terms.

pub mod access;
pub mod denial;
pub mod periods;
pub mod resolve;
pub mod share;
