//! Test doubles of generated gRPC servers.
//!
//! The contracts are generated without default method bodies, so a production service that
//! forgets an RPC does not compile. A test double usually serves the one or two RPCs its test
//! calls; [`test_double!`](crate::test_double) writes the others out as answering
//! `UNIMPLEMENTED` naming the method, so the double still implements the whole trait and a call
//! the test did not plan for fails loudly instead of returning made-up data.

/// Implements a generated server trait for a test double: the methods written in the `impl`
/// block as they are, and each method listed after `unused` answering `UNIMPLEMENTED`.
///
/// ```ignore
/// mesh_testkit::test_double! {
///     impl ProductService for Memory {
///         async fn get_product(&self, r: Request<GetProductRequest>)
///             -> Result<Response<GetProductResponse>, Status> { ... }
///     }
///     unused {
///         create_product(CreateProductRequest) -> CreateProductResponse;
///     }
/// }
/// ```
#[macro_export]
macro_rules! test_double {
    (
        impl $service:ident for $double:ty { $($served:tt)* }
        unused { $($method:ident($request:ty) -> $response:ty;)* }
    ) => {
        #[$crate::double::async_trait]
        impl $service for $double {
            $($served)*
            $(
                async fn $method(
                    &self,
                    _request: $crate::double::Request<$request>,
                ) -> ::std::result::Result<$crate::double::Response<$response>, $crate::double::Status> {
                    ::std::result::Result::Err($crate::double::Status::unimplemented(concat!(
                        stringify!($method),
                        " is not served by this test double"
                    )))
                }
            )*
        }
    };
}

#[doc(hidden)]
pub use tonic::{Request, Response, Status, async_trait};
