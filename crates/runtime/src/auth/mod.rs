//! Authentication and authorization of incoming calls, shared by every service.
//!
//! - [`identity`]: the caller ([`Identity`]) a handler finds in the request extensions, and the
//!   [`Role`]s of the RBAC model;
//! - [`claims`]: the JWT claims the auth service signs and every service checks;
//! - [`clock`]: the time tokens are checked against (injectable, so tests need no sleeps);
//! - [`jwks`]: where verification keys come from: the auth service's JWKS over gRPC, cached and
//!   refreshed on an unknown `kid` ([`JwksClient`]), or a local set ([`StaticKeys`]);
//! - [`verify`]: the token checks ([`Verifier`]): EdDSA only (so `alg: none` and HMAC tricks
//!   fail), signature, issuer, audience, expiry and not-before, each refusal its own [`AuthError`];
//! - [`policy`]: a service's declarative per-RPC table ([`Policy`]): public, any authenticated
//!   caller, or a set of roles;
//! - [`layer`]: [`Guarded`], the wrapper that applies a policy to a generated tonic server;
//! - [`rejections`]: [`AuthRejections`], the counter of refused calls by module and reason;
//! - [`service_token`]: client credentials for service-to-service calls.
//!
//! A service applies all of it in one line of its `build`:
//!
//! ```ignore
//! let server = ProductServiceServer::new(api);
//! Ok(ServiceRoutes::new().add_service(auth::guard(&ctx, policy::product(), server)?))
//! ```

pub mod claims;
pub mod clock;
pub mod identity;
pub mod jwks;
pub mod layer;
pub mod policy;
pub mod rejections;
pub mod service_token;
pub mod verify;

pub use claims::Claims;
pub use clock::{Clock, ManualClock, SystemClock};
pub use identity::{Identity, Role};
pub use jwks::{JwksClient, KeySource, StaticKeys};
pub use layer::{Guarded, guard, guard_with};
pub use policy::{Access, Policy};
pub use rejections::AuthRejections;
pub use service_token::{SERVICE_CLIENT_SECRET, ServiceTokenChannel, ServiceTokens};
pub use verify::{AuthError, JWT_AUDIENCE, JWT_ISSUER, Verifier, VerifierSettings};
