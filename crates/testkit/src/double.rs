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

/// [`test_double!`](crate::test_double) for a `ProductService` double that serves `GetProduct`
/// only (a stand-in product service of many runtime and edge tests): every other product RPC
/// answers `UNIMPLEMENTED`.
///
/// ```ignore
/// mesh_testkit::get_product_double! {
///     impl ProductService for Memory {
///         async fn get_product(&self, r: Request<GetProductRequest>)
///             -> Result<Response<GetProductResponse>, Status> { ... }
///     }
/// }
/// ```
#[macro_export]
macro_rules! get_product_double {
    (impl $service:ident for $double:ty { $($served:tt)* }) => {
        $crate::test_double! {
            impl $service for $double { $($served)* }
            unused {
                create_product($crate::double::product::CreateProductRequest) -> $crate::double::product::CreateProductResponse;
                batch_get_products($crate::double::product::BatchGetProductsRequest) -> $crate::double::product::BatchGetProductsResponse;
                list_products($crate::double::product::ListProductsRequest) -> $crate::double::product::ListProductsResponse;
                update_product($crate::double::product::UpdateProductRequest) -> $crate::double::product::UpdateProductResponse;
                delete_product($crate::double::product::DeleteProductRequest) -> $crate::double::product::DeleteProductResponse;
                create_category($crate::double::product::CreateCategoryRequest) -> $crate::double::product::CreateCategoryResponse;
                list_categories($crate::double::product::ListCategoriesRequest) -> $crate::double::product::ListCategoriesResponse;
            }
        }
    };
}

#[doc(hidden)]
pub use mesh_contracts::product::v1 as product;
