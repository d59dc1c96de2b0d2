//! The device stream with small codec buffers.
//!
//! tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB decode buffer per call
//! up front. For unary calls that is nothing; for the gateway, whose calls are long-lived device
//! streams of frames of a few dozen bytes, it is 16 KiB per connected device (160 MB at 10,000
//! devices). [`SmallBuffers`] serves `OpenChannel` with buffers of [`BUFFER_SIZE`] bytes (they
//! grow by that step for larger frames) and hands every other method to the generated server.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use mesh_contracts::iot::v1::{OpenChannelRequest, OpenChannelResponse};
use mesh_runtime::route::{self, GrpcRoute};
use tonic::codec::{BufferSettings, Codec};
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tower_service::Service;

use crate::api::GatewayApi;
use crate::channel::Outbound;

/// Initial (and growth step of the) encode and decode buffers of one device stream.
pub const BUFFER_SIZE: usize = 512;

const OPEN_CHANNEL: &str = "/iot.v1.GatewayService/OpenChannel";

/// Protobuf codec of the device stream with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmallCodec;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, 32 * 1024)
}

impl Codec for SmallCodec {
    type Encode = OpenChannelResponse;
    type Decode = OpenChannelRequest;
    type Encoder = ProstEncoder<OpenChannelResponse>;
    type Decoder = ProstDecoder<OpenChannelRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

struct OpenChannel(GatewayApi);

impl tonic::server::StreamingService<OpenChannelRequest> for OpenChannel {
    type Response = OpenChannelResponse;
    type ResponseStream = Outbound;
    type Future = BoxFuture<'static, Result<tonic::Response<Outbound>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<OpenChannelRequest>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            Ok(tonic::Response::new(crate::channel::open(
                api.gateway().clone(),
                request,
            )))
        })
    }
}

/// The generated gateway server, with `OpenChannel` served through [`SmallCodec`].
#[derive(Debug, Clone)]
pub struct SmallBuffers<S> {
    inner: S,
    api: GatewayApi,
    max_message_bytes: usize,
}

impl<S> SmallBuffers<S> {
    /// Wraps the generated `inner` server; `api` answers `OpenChannel`.
    pub fn new(inner: S, api: GatewayApi, max_message_bytes: usize) -> Self {
        Self {
            inner,
            api,
            max_message_bytes,
        }
    }
}

impl<S: NamedService> NamedService for SmallBuffers<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: GrpcRoute> Service<route::Request> for SmallBuffers<S> {
    type Response = route::Response;
    type Error = Infallible;
    type Future = route::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: route::Request) -> Self::Future {
        if req.uri().path() != OPEN_CHANNEL {
            return Box::pin(self.inner.call(req));
        }
        let method = OpenChannel(self.api.clone());
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SmallCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.streaming(method, req).await)
        })
    }
}
