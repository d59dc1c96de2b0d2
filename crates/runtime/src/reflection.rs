//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`), answered from the encoded
//! descriptor sets of the port: what every gRPC tool (grpcurl, grpcui, Postman, Python's
//! `grpcio-reflection`) uses to discover and call a service without its protos.
//!
//! Written here rather than taken from `tonic-reflection`'s server because tools list the
//! services and then ask for the file of each, and that server (a) listed the reflection service
//! without having its descriptor and (b) ended the whole stream with `NOT_FOUND` on the first
//! unknown symbol, losing the client's later questions. Here:
//! - every listed service is checked to resolve when the index is built ([`ReflectionIndex::new`]
//!   fails otherwise), and the reflection protocols' own descriptors are always included;
//! - a question that cannot be answered gets an in-stream `error_response` (`NOT_FOUND`,
//!   `INVALID_ARGUMENT`) and the stream goes on;
//! - a file comes with its transitive dependencies, each file sent at most once per stream
//!   (as grpc-go does), raw as encoded (options such as `google.api.http` intact);
//! - both versions share one implementation: their messages are the same on the wire, so a
//!   v1alpha message is re-read as its v1 twin.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Buf as _;
use futures::Stream;
use prost::Message as _;
use prost::encoding::{WireType, decode_key, skip_field};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// Why a reflection index could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// A descriptor set is not a valid encoded `FileDescriptorSet`.
    #[error("a descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A service to be listed has no descriptor in the sets.
    #[error("service {0} is listed but no descriptor set describes it")]
    Unresolved(String),
}

/// The descriptors of one port, indexed for the reflection questions.
#[derive(Debug, Default)]
pub struct ReflectionIndex {
    services: Vec<String>,
    /// File name -> the file as encoded in its set.
    files: HashMap<String, Vec<u8>>,
    /// File name -> the files it imports.
    imports: HashMap<String, Vec<String>>,
    /// Fully qualified symbol (no leading dot) -> the file defining it.
    symbols: HashMap<String, String>,
    /// (extended message, field number) -> the file defining the extension.
    extensions: HashMap<(String, i32), String>,
}

impl ReflectionIndex {
    /// Indexes the encoded `FileDescriptorSet`s `sets` (a file in several sets counts once) plus
    /// the reflection protocols' own files, listing `services` and the two reflection services.
    pub fn new<'a>(
        sets: impl IntoIterator<Item = &'a [u8]>,
        services: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ReflectionError> {
        let mut index = Self::default();
        for set in sets
            .into_iter()
            .chain([v1::FILE_DESCRIPTOR_SET, v1alpha::FILE_DESCRIPTOR_SET])
        {
            for raw in files_of(set)? {
                index.add_file(raw)?;
            }
        }
        let mut listed: Vec<String> = services
            .into_iter()
            .map(String::from)
            .chain([
                "grpc.reflection.v1.ServerReflection".to_string(),
                "grpc.reflection.v1alpha.ServerReflection".to_string(),
            ])
            .collect();
        listed.sort();
        listed.dedup();
        for service in &listed {
            if !index.symbols.contains_key(service) {
                return Err(ReflectionError::Unresolved(service.clone()));
            }
        }
        index.services = listed;
        Ok(index)
    }

    fn add_file(&mut self, raw: Vec<u8>) -> Result<(), ReflectionError> {
        let file = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
        let name = file.name().to_string();
        if self.files.contains_key(&name) {
            return Ok(());
        }
        let package = file.package();
        let scope = |n: &str| {
            if package.is_empty() {
                n.to_string()
            } else {
                format!("{package}.{n}")
            }
        };
        let mut symbols = Vec::new();
        for service in &file.service {
            let full = scope(service.name());
            for method in &service.method {
                symbols.push(format!("{full}.{}", method.name()));
            }
            symbols.push(full);
        }
        for message in &file.message_type {
            message_symbols(&scope(message.name()), message, &mut symbols, &mut |e| {
                self.extension(e, &name)
            });
        }
        for e in &file.enum_type {
            enum_symbols(package, e, &mut symbols);
        }
        for extension in &file.extension {
            symbols.push(scope(extension.name()));
            self.extension(extension, &name);
        }
        for symbol in symbols {
            self.symbols.entry(symbol).or_insert_with(|| name.clone());
        }
        self.imports.insert(name.clone(), file.dependency.clone());
        self.files.insert(name, raw);
        Ok(())
    }

    fn extension(&mut self, field: &FieldDescriptorProto, file: &str) {
        let extendee = field.extendee().trim_start_matches('.').to_string();
        self.extensions
            .entry((extendee, field.number()))
            .or_insert_with(|| file.to_string());
    }

    /// The services this port lists.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Whether `symbol` (fully qualified, without a leading dot) resolves to a file.
    pub fn resolves(&self, symbol: &str) -> bool {
        self.symbols.contains_key(symbol)
    }

    /// Answers one question; `sent` holds the files this stream has already received.
    fn answer(&self, request: &MessageRequest, sent: &mut HashSet<String>) -> MessageResponse {
        let file = match request {
            MessageRequest::ListServices(_) => {
                return MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                });
            }
            MessageRequest::FileByFilename(name) => self
                .files
                .contains_key(name)
                .then(|| name.clone())
                .ok_or_else(|| format!("file {name:?} not found")),
            MessageRequest::FileContainingSymbol(symbol) => self
                .symbols
                .get(symbol.trim_start_matches('.'))
                .cloned()
                .ok_or_else(|| format!("symbol {symbol:?} not found")),
            MessageRequest::FileContainingExtension(e) => self
                .extensions
                .get(&(
                    e.containing_type.trim_start_matches('.').to_string(),
                    e.extension_number,
                ))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "no extension {} of {:?} found",
                        e.extension_number, e.containing_type
                    )
                }),
            MessageRequest::AllExtensionNumbersOfType(name) => {
                let base = name.trim_start_matches('.');
                if !self.symbols.contains_key(base) {
                    return not_found(format!("type {name:?} not found"));
                }
                let mut numbers: Vec<i32> = self
                    .extensions
                    .keys()
                    .filter(|(extendee, _)| extendee == base)
                    .map(|(_, n)| *n)
                    .collect();
                numbers.sort_unstable();
                return MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                    base_type_name: base.to_string(),
                    extension_number: numbers,
                });
            }
        };
        match file {
            Ok(name) => MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
                file_descriptor_proto: self.with_imports(&name, sent),
            }),
            Err(message) => not_found(message),
        }
    }

    /// File `name` (always) followed by those of its transitive imports not yet in `sent`.
    fn with_imports(&self, name: &str, sent: &mut HashSet<String>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut todo = vec![name.to_string()];
        let mut first = true;
        while let Some(file) = todo.pop() {
            if !sent.insert(file.clone()) && !first {
                continue;
            }
            first = false;
            if let Some(raw) = self.files.get(&file) {
                out.push(raw.clone());
            }
            if let Some(imports) = self.imports.get(&file) {
                todo.extend(imports.iter().rev().cloned());
            }
        }
        out
    }

    /// One reflection stream: each request answered in order, errors in-stream. `Q` and `R` are
    /// the request and response of the protocol version served, `to_v1` and `from_v1` convert.
    fn serve<Q, R>(
        self: Arc<Self>,
        requests: Streaming<Q>,
        to_v1: fn(Q) -> v1::ServerReflectionRequest,
        from_v1: fn(v1::ServerReflectionResponse) -> R,
    ) -> ResponseStream<R>
    where
        Q: Send + 'static,
        R: Send + 'static,
    {
        let state = Some((requests, HashSet::new()));
        Box::pin(futures::stream::unfold(state, move |state| {
            let index = self.clone();
            async move {
                let (mut requests, mut sent) = state?;
                match requests.message().await {
                    Ok(Some(request)) => {
                        let request = to_v1(request);
                        let message_response = match &request.message_request {
                            Some(question) => index.answer(question, &mut sent),
                            None => error(tonic::Code::InvalidArgument, "empty request".into()),
                        };
                        let response = v1::ServerReflectionResponse {
                            valid_host: request.host.clone(),
                            original_request: Some(request),
                            message_response: Some(message_response),
                        };
                        Some((Ok(from_v1(response)), Some((requests, sent))))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        }))
    }
}

/// `message` re-read as its twin of the other protocol version (same fields, same numbers).
fn twin<A: prost::Message, B: prost::Message + Default>(message: &A) -> B {
    B::decode(message.encode_to_vec().as_slice()).unwrap_or_default()
}

fn not_found(message: String) -> MessageResponse {
    error(tonic::Code::NotFound, message)
}

fn error(code: tonic::Code, message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: code as i32,
        error_message: message,
    })
}

/// The symbols `message` (named `full`) defines: itself, its fields, nested messages, enums and
/// extensions (reported to `extension`).
fn message_symbols(
    full: &str,
    message: &DescriptorProto,
    out: &mut Vec<String>,
    extension: &mut dyn FnMut(&FieldDescriptorProto),
) {
    out.push(full.to_string());
    for field in &message.field {
        out.push(format!("{full}.{}", field.name()));
    }
    for oneof in &message.oneof_decl {
        out.push(format!("{full}.{}", oneof.name()));
    }
    for nested in &message.nested_type {
        message_symbols(&format!("{full}.{}", nested.name()), nested, out, extension);
    }
    for e in &message.enum_type {
        enum_symbols(full, e, out);
    }
    for field in &message.extension {
        out.push(format!("{full}.{}", field.name()));
        extension(field);
    }
}

/// The symbols of enum `e` in `scope`: the enum and its values (siblings of the enum, as in C++).
fn enum_symbols(scope: &str, e: &EnumDescriptorProto, out: &mut Vec<String>) {
    let join = |n: &str| {
        if scope.is_empty() {
            n.to_string()
        } else {
            format!("{scope}.{n}")
        }
    };
    out.push(join(e.name()));
    for value in &e.value {
        out.push(join(value.name()));
    }
}

/// The encoded files of an encoded `FileDescriptorSet` (field 1), byte for byte.
fn files_of(mut set: &[u8]) -> Result<Vec<Vec<u8>>, prost::DecodeError> {
    let mut files = Vec::new();
    while set.has_remaining() {
        let (tag, wire_type) = decode_key(&mut set)?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let mut file = Vec::new();
            prost::encoding::bytes::merge(
                wire_type,
                &mut file,
                &mut set,
                prost::encoding::DecodeContext::default(),
            )?;
            files.push(file);
        } else {
            skip_field(
                wire_type,
                tag,
                &mut set,
                prost::encoding::DecodeContext::default(),
            )?;
        }
    }
    Ok(files)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The reflection service of one port, in both protocol versions.
#[derive(Debug, Clone)]
pub struct Reflection {
    index: Arc<ReflectionIndex>,
}

impl Reflection {
    /// Serves `index`.
    pub fn new(index: ReflectionIndex) -> Self {
        Self {
            index: Arc::new(index),
        }
    }

    /// The `grpc.reflection.v1` service.
    pub fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<Self> {
        v1::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    /// The `grpc.reflection.v1alpha` service (grpcurl 1.8 asks only this one).
    pub fn v1alpha(&self) -> v1alpha::server_reflection_server::ServerReflectionServer<Self> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = ResponseStream<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let stream = self.index.clone().serve(request.into_inner(), |q| q, |r| r);
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = ResponseStream<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let stream = self
            .index
            .clone()
            .serve(request.into_inner(), |q| twin(&q), |r| twin(&r));
        Ok(Response::new(stream))
    }
}
