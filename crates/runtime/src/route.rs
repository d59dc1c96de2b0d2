//! The shape of a gRPC route a service's port serves: a tower service over tonic's HTTP
//! requests that never fails (a failure is a gRPC status in the response), as tonic's generated
//! servers are. [`GrpcRoute`] names that bound once, for
//! [`ServiceRoutes::add_service`](crate::ServiceRoutes::add_service) and for the wrappers that
//! keep a route's shape (the auth guard, a service's own codec), which implement
//! `Service<Request>` with [`Response`], `Infallible` and [`ResponseFuture`].

use std::convert::Infallible;

use futures::future::BoxFuture;
use tower_service::Service;

/// A request to a gRPC route.
pub type Request = http::Request<tonic::body::Body>;

/// A gRPC route's response.
pub type Response = http::Response<tonic::body::Body>;

/// The future of a wrapper's response.
pub type ResponseFuture = BoxFuture<'static, Result<Response, Infallible>>;

/// A gRPC route: a generated tonic server or a wrapper of one (clonable per connection, its
/// calls sendable to another task).
pub trait GrpcRoute:
    Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> GrpcRoute for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}
