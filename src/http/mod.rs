//! The HTTP edge: the one error type and its Vidu envelope (`error`), the request id middleware
//! (`request_context`), the gateway's headers and responses (`responses`), what every worker shares and the caller's identity as an extractor (`app_state`),
//! the thin handlers (`routes`), each served and described from one annotation (`route`), and the API description
//! built from those (`openapi`). Nothing below this module takes an actix type.

pub mod app_state;
pub mod error;
pub mod openapi;
pub mod request_context;
pub mod responses;
pub mod route;
pub mod routes;
