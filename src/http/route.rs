//! One route, served and described from one annotation: a handler's `#[utoipa::path]` names the path and methods,
//! and [`route`] serves the handler on exactly those — so what the API description says is what actix serves.

use std::marker::PhantomData;

use actix_web::dev::{AppService, HttpServiceFactory};
use actix_web::http::Method;
use actix_web::{FromRequest, Handler, Responder, web};
use utoipa::openapi::path::{HttpMethod, Paths};
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa_actix_web::OpenApiFactory;

/// A handler and its description (`D`: the `__path_<handler>` type its `#[utoipa::path]` generates).
pub struct Route<D, F, Args> {
    doc: D,
    handler: F,
    args: PhantomData<fn(Args)>,
}

/// The route of `handler`, on the path and methods of `doc`, its annotation:
/// `route(gateway::usage, gateway::__path_usage)`.
pub fn route<D, F, Args>(handler: F, doc: D) -> Route<D, F, Args>
where
    D: utoipa::Path,
{
    // A handler registered with another handler's description would be served under the wrong path: the
    // annotation's operation id is the handler's name.
    debug_assert!(
        D::operation()
            .operation_id
            .is_some_and(|id| { std::any::type_name::<F>().ends_with(&format!("::{id}")) }),
        "{} is registered with the description of {:?}",
        std::any::type_name::<F>(),
        D::operation().operation_id
    );
    Route {
        doc,
        handler,
        args: PhantomData,
    }
}

impl<D, F, Args> HttpServiceFactory for Route<D, F, Args>
where
    D: utoipa::Path,
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    fn register(self, config: &mut AppService) {
        let mut resource = web::resource(D::path());
        for method in D::methods() {
            resource = resource.route(web::method(actix_method(&method)).to(self.handler.clone()));
        }
        resource.register(config);
    }
}

impl<D: OpenApiFactory, F, Args> OpenApiFactory for Route<D, F, Args> {
    fn paths(&self) -> Paths {
        self.doc.paths()
    }

    fn schemas(&self, schemas: &mut Vec<(String, RefOr<Schema>)>) {
        self.doc.schemas(schemas);
    }
}

fn actix_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}
