//! The gRPC edge: tonic services that translate `pdc.v1` messages to calls on [`Coordinator`] and back.
//!
//! Protobuf types stop here; everything below speaks domain types.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use pdc_ledger::signing::{
    ConsentAction, ConsentConditions, Contribution, PrivacyClaim, StatisticKind, StatisticsRelease,
};
use pdc_proto::pb::audit_service_server::AuditServiceServer;
use pdc_proto::pb::federation_service_server::{FederationService, FederationServiceServer};
use pdc_proto::pb::study_service_server::{StudyService, StudyServiceServer};
use pdc_proto::pb::witness_service_server::WitnessServiceServer;
use pdc_proto::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES, pb};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Caller, StudyAction};
use crate::audit_server::{AuditApi, WitnessApi};
use crate::limits::Limits;
use crate::metrics::{Telemetry, code_label};
use crate::service::{
    Coordinator, FailureKind, MAX_FEASIBILITY_TIMEOUT, ModelSnapshot, RequestAuth, RoundRecord, StudyEvent, StudyState,
    StudyStatus, TaskSpec, UpdateHeader,
};
use crate::statistics::CohortAnswer;
use crate::tls::{Peer, bound};
use crate::{Error, Result};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// zstd's level for model chunks: the fastest, since a model is compressed once per download.
const ZSTD_LEVEL: i32 = 1;

/// Serves the coordinator's gRPC services on `listener` until `shutdown` completes.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_with_tls(coordinator, listener, None, shutdown).await
}

/// Serves the coordinator's gRPC services on `listener` until `shutdown` completes, over TLS when `tls` is given
/// (see [`crate::tls`]: FederationService calls must then come with the PDC's own client certificate).
pub async fn serve_with_tls(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: Option<&crate::tls::TlsSettings>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    let limits = coordinator.limits().clone();
    serve_routes(routes(coordinator), listener, tls, &limits, shutdown).await
}

/// Serves `routes` on `listener` until `shutdown` completes, over TLS when `tls` is given, within the transport
/// `limits`: HTTP/2 keep-alive pings (a vanished peer is noticed and its streams end), at most
/// `max_concurrent_streams` streams per connection, and at most `max_requests_per_connection` requests in
/// handlers per connection, the rest refused with `ResourceExhausted` rather than queued. Each service's own
/// deadlines are [`Deadlines`].
async fn serve_routes(
    routes: tonic::service::Routes,
    listener: TcpListener,
    tls: Option<&crate::tls::TlsSettings>,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.max_requests_per_connection)
        .load_shed(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    builder.add_routes(routes).serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await
}

/// The coordinator's three gRPC services (StudyService, FederationService, AuditService) with their message-size
/// limits and the AuditService's membership check, for a server built elsewhere (e.g. one with extra layers).
pub fn routes(coordinator: Arc<Coordinator>) -> tonic::service::Routes {
    let limits = coordinator.limits().clone();
    let study = StudyServiceServer::new(StudyApi { coordinator: Arc::clone(&coordinator) })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let audit = AuditServiceServer::new(AuditApi::new(Arc::clone(coordinator.ledger())))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // The AuditService is read-only; with a consortium only its members may read it.
    let reader = Arc::clone(&coordinator);
    let unary = limits.request_timeout();
    let audit = tonic::service::interceptor::InterceptedService::new(
        Deadlines::new(audit, unary),
        move |request: Request<()>| -> Result<Request<()>, Status> {
            reader.caller(Peer::of(&request).certified_key()?)?;
            Ok(request)
        },
    );
    let first_message_timeout = limits.first_message_timeout();
    let federation = FederationServiceServer::new(FederationApi { coordinator, first_message_timeout })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(Deadlines::new(study, unary))
        .add_service(Deadlines::new(federation, unary))
        .add_service(audit)
}

/// A service whose calls end with `DeadlineExceeded` when their handler has not answered within their deadline
/// (see [`deadline_of`]). The deadline covers the handler up to its response's headers: a unary call whole, a
/// server stream (`WaitTasks`, a model download, `WatchStudy`, ledger entries) only until its first message, so
/// long streams are never cut.
#[derive(Clone)]
struct Deadlines<S> {
    inner: S,
    unary: Duration,
}

impl<S> Deadlines<S> {
    fn new(inner: S, unary: Duration) -> Self {
        Self { inner, unary }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Deadlines<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<HttpRequest> for Deadlines<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, std::convert::Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let deadline = deadline_of(&method, self.unary);
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else { return response.await };
            match tokio::time::timeout(deadline, response).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "{method} took longer than its deadline of {deadline:?} (limits.request_timeout_secs)"
                ))
                .into_http()),
            }
        })
    }
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// The deadline of a call to `method` when unary calls have `unary`: a feasibility query waits for the PDCs'
/// answers for up to its own timeout on top; an upload has none as a whole (a large model takes long on a slow
/// link), only the deadline on its header ([`Limits::first_message_timeout_ms`]) and its chunks' checks.
fn deadline_of(method: &str, unary: Duration) -> Option<Duration> {
    match method {
        "SubmitUpdate" => None,
        "Feasibility" => Some(unary + MAX_FEASIBILITY_TIMEOUT),
        _ => Some(unary),
    }
}

/// Serves a witness's WitnessService on `listener` until `shutdown` completes.
pub async fn serve_witness(
    witness: WitnessApi,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_witness_with_tls(witness, listener, None, shutdown).await
}

/// Serves a witness's WitnessService on `listener` until `shutdown` completes, over TLS when `tls` is given:
/// with its `client_certs` the coordinator's certificate, only the coordinator can hand it checkpoints.
pub async fn serve_witness_with_tls(
    witness: WitnessApi,
    listener: TcpListener,
    tls: Option<&crate::tls::TlsSettings>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    let limits = Limits::default();
    let witness = Deadlines::new(WitnessServiceServer::new(witness), limits.request_timeout());
    serve_routes(tonic::service::Routes::new(witness), listener, tls, &limits, shutdown).await
}

/// Binds `address` (port 0 picks a free one) and returns the listener with its actual address.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

struct StudyApi {
    coordinator: Arc<Coordinator>,
}

impl StudyApi {
    /// `request`'s message, once its caller may do `action` on the study it names (see [`crate::access`]).
    fn authorized<T>(
        &self,
        request: Request<T>,
        action: StudyAction,
        study_id: impl FnOnce(&T) -> Option<&str>,
    ) -> Result<(Caller, T), Status> {
        let caller = self.coordinator.caller(Peer::of(&request).certified_key()?)?;
        let message = request.into_inner();
        self.coordinator.authorize(&caller, action, study_id(&message))?;
        Ok((caller, message))
    }
}

struct FederationApi {
    coordinator: Arc<Coordinator>,
    /// How long an upload's header may take to arrive ([`Limits::first_message_timeout_ms`]).
    first_message_timeout: Duration,
}

#[tonic::async_trait]
impl StudyService for StudyApi {
    async fn create_study(
        &self,
        request: Request<pb::CreateStudyRequest>,
    ) -> Result<Response<pb::CreateStudyResponse>, Status> {
        let (caller, request) = self.authorized(request, StudyAction::Create, |_| None)?;
        let signature = (!request.manifest_signature.is_empty()).then_some(request.manifest_signature.as_slice());
        let (study_id, manifest_hash, warnings) = self.coordinator.create_study(
            &caller,
            &request.manifest_toml,
            &request.validation_csv,
            signature,
            request.draft,
        )?;
        Ok(Response::new(pb::CreateStudyResponse { study_id, manifest_hash: hex::encode(manifest_hash), warnings }))
    }

    async fn open_recruiting(&self, request: Request<pb::StudyRef>) -> Result<Response<pb::StudyStatus>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Manage, |r| Some(r.study_id.as_str()))?;
        let status = self.coordinator.open_recruiting(&request.study_id)?;
        Ok(Response::new(status_to_pb(&status)))
    }

    async fn start_study(&self, request: Request<pb::StudyRef>) -> Result<Response<pb::StudyStatus>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Manage, |r| Some(r.study_id.as_str()))?;
        let status = self.coordinator.start_study(&request.study_id)?;
        Ok(Response::new(status_to_pb(&status)))
    }

    async fn stop_study(&self, request: Request<pb::StudyRef>) -> Result<Response<pb::StudyStatus>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Manage, |r| Some(r.study_id.as_str()))?;
        let status = self.coordinator.stop_study(&request.study_id, "stopped by the researcher")?;
        Ok(Response::new(status_to_pb(&status)))
    }

    async fn get_status(&self, request: Request<pb::StudyRef>) -> Result<Response<pb::StudyStatus>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Read, |r| Some(r.study_id.as_str()))?;
        let status = self.coordinator.status(&request.study_id)?;
        Ok(Response::new(status_to_pb(&status)))
    }

    type WatchStudyStream = ResponseStream<pb::StudyEvent>;

    async fn watch_study(&self, request: Request<pb::StudyRef>) -> Result<Response<Self::WatchStudyStream>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Read, |r| Some(r.study_id.as_str()))?;
        let study_id = request.study_id;
        let (status, mut events) = self.coordinator.watch(&study_id)?;
        let coordinator = Arc::clone(&self.coordinator);
        let stream = async_stream::stream! {
            let ended = is_terminal(status.state);
            yield Ok(pb::StudyEvent { event: Some(pb::study_event::Event::Status(status_to_pb(&status))) });
            if ended {
                return;
            }
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let terminal = matches!(&event, StudyEvent::Status(s) if is_terminal(s.state));
                        yield Ok(event_to_pb(&event));
                        if terminal {
                            return;
                        }
                    }
                    // A slow watcher missed events: give it the whole status instead.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match coordinator.status(&study_id) {
                            Ok(status) => yield Ok(pb::StudyEvent {
                                event: Some(pb::study_event::Event::Status(status_to_pb(&status))),
                            }),
                            Err(error) => {
                                yield Err(Status::from(error));
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    type DownloadModelStream = ResponseStream<pb::ModelPart>;

    async fn download_model(
        &self,
        request: Request<pb::StudyRef>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Download, |r| Some(r.study_id.as_str()))?;
        let snapshot = self.coordinator.current_model(&request.study_id)?;
        Ok(Response::new(model_stream(snapshot, Arc::clone(self.coordinator.metrics()), pb::Compression::None)))
    }

    async fn feasibility(
        &self,
        request: Request<pb::FeasibilityRequest>,
    ) -> Result<Response<pb::FeasibilityReport>, Status> {
        let (_, request) = self.authorized(request, StudyAction::Feasibility, |_| None)?;
        if request.timeout_secs == 0 || u64::from(request.timeout_secs) > MAX_FEASIBILITY_TIMEOUT.as_secs() {
            return Err(Status::from(Error::InvalidArgument {
                field: "timeout_secs",
                detail: format!("{} is not between 1 and {}", request.timeout_secs, MAX_FEASIBILITY_TIMEOUT.as_secs()),
            }));
        }
        let timeout = std::time::Duration::from_secs(u64::from(request.timeout_secs));
        let outcome = self.coordinator.feasibility(&request.label, request.epsilon, request.delta, timeout).await?;
        let answers = outcome
            .answers
            .into_iter()
            .map(|(pdc_id, answer)| match answer {
                CohortAnswer::Released { counts, epsilon } => pb::CohortAnswer {
                    pdc_id,
                    answered: true,
                    positives: counts.positives,
                    negatives: counts.negatives,
                    noise_std: counts.noise_std(),
                    declined: String::new(),
                    pdc_epsilon: epsilon,
                },
                CohortAnswer::Declined(reason) => pb::CohortAnswer { pdc_id, declined: reason, ..Default::default() },
                CohortAnswer::NoAnswer => pb::CohortAnswer { pdc_id, ..Default::default() },
            })
            .collect();
        Ok(Response::new(pb::FeasibilityReport {
            query_id: outcome.query_id,
            noise_multiplier: outcome.noise_multiplier,
            answers,
        }))
    }
}

#[tonic::async_trait]
impl FederationService for FederationApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = Peer::of(&request);
        let request = request.into_inner();
        peer.check_registration(&self.coordinator, &request.pdc_id, &request.public_key)?;
        let newly_registered = self.coordinator.register(&request.pdc_id, &request.public_key, &request.signature)?;
        Ok(Response::new(pb::RegisterResponse { newly_registered }))
    }

    async fn list_studies(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListStudiesResponse>, Status> {
        let auth = auth_from_pb(Some(bound(&self.coordinator, request, |r| &r.pdc_id)?))?;
        let studies = self
            .coordinator
            .list_studies(&auth)?
            .into_iter()
            .map(|listing| pb::StudyListing {
                study_id: listing.study_id,
                name: listing.name,
                manifest_hash: hex::encode(listing.manifest_hash),
                manifest_toml: listing.manifest_toml,
                consented: listing.consented,
                researcher_id: listing.researcher.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
                manifest_signature: listing.researcher.map(|(_, signature)| signature.to_vec()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListStudiesResponse { studies }))
    }

    async fn consent(&self, request: Request<pb::ConsentRequest>) -> Result<Response<pb::ConsentResponse>, Status> {
        let request = bound(&self.coordinator, request, |r| &r.pdc_id)?;
        let conditions = request.conditions.map(|c| ConsentConditions {
            max_rounds: c.max_rounds,
            max_epsilon: c.max_epsilon,
            expires_at_ms: c.expires_at_ms,
        });
        self.coordinator.consent(
            ConsentAction::Grant,
            &request.pdc_id,
            &request.study_id,
            &request.signature,
            conditions,
        )?;
        Ok(Response::new(pb::ConsentResponse {}))
    }

    async fn revoke_consent(
        &self,
        request: Request<pb::ConsentRequest>,
    ) -> Result<Response<pb::ConsentResponse>, Status> {
        let request = bound(&self.coordinator, request, |r| &r.pdc_id)?;
        if request.conditions.is_some() {
            return Err(Status::invalid_argument("invalid conditions: a revocation carries no conditions"));
        }
        self.coordinator.consent(
            ConsentAction::Revoke,
            &request.pdc_id,
            &request.study_id,
            &request.signature,
            None,
        )?;
        Ok(Response::new(pb::ConsentResponse {}))
    }

    type WaitTasksStream = ResponseStream<pb::Task>;

    async fn wait_tasks(&self, request: Request<pb::SignedRequest>) -> Result<Response<Self::WaitTasksStream>, Status> {
        let auth = auth_from_pb(Some(bound(&self.coordinator, request, |r| &r.pdc_id)?))?;
        let receiver = self.coordinator.open_task_stream(&auth)?;
        let stream = ReceiverStream::new(receiver).map(|task| Ok(task_to_pb(task)));
        Ok(Response::new(Box::pin(stream)))
    }

    type DownloadGlobalModelStream = ResponseStream<pb::ModelPart>;

    async fn download_global_model(
        &self,
        request: Request<pb::ModelRequest>,
    ) -> Result<Response<Self::DownloadGlobalModelStream>, Status> {
        let request = bound(&self.coordinator, request, |r| r.auth.as_ref().map_or("", |auth| auth.pdc_id.as_str()))?;
        let compression = compression_from_pb(request.compression)?;
        let auth = auth_from_pb(request.auth)?;
        let snapshot = self.coordinator.participant_model(&auth, &request.study_id, request.round)?;
        Ok(Response::new(model_stream(snapshot, Arc::clone(self.coordinator.metrics()), compression)))
    }

    async fn upload_status(
        &self,
        request: Request<pb::UploadStatusRequest>,
    ) -> Result<Response<pb::UploadStatusResponse>, Status> {
        let request = bound(&self.coordinator, request, |r| r.auth.as_ref().map_or("", |auth| auth.pdc_id.as_str()))?;
        let auth = auth_from_pb(request.auth)?;
        let update_hash = hash_from_pb(&request.update_hash)?;
        let progress = self.coordinator.upload_status(&auth, &request.study_id, request.round, update_hash)?;
        Ok(Response::new(pb::UploadStatusResponse {
            acknowledged_bytes: progress.acknowledged_bytes,
            running_hash: progress.running_hash.to_vec(),
            total_bytes: progress.total_bytes,
            receiving: progress.receiving,
        }))
    }

    async fn submit_update(
        &self,
        request: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReceipt>, Status> {
        let peer = Peer::of(&request);
        let result = self.receive_update(peer, request.into_inner()).await;
        if let Err(status) = &result {
            self.coordinator.metrics().update_rejected(code_label(status.code()));
        }
        result
    }

    async fn report_failure(&self, request: Request<pb::FailureReport>) -> Result<Response<pb::FailureAck>, Status> {
        let request = bound(&self.coordinator, request, |r| r.auth.as_ref().map_or("", |auth| auth.pdc_id.as_str()))?;
        let auth = auth_from_pb(request.auth)?;
        let kind = match pb::FailureKind::try_from(request.kind) {
            Ok(pb::FailureKind::Unspecified) => FailureKind::Other,
            Ok(pb::FailureKind::BudgetExhausted) => FailureKind::BudgetExhausted,
            Err(_) => {
                return Err(Status::invalid_argument(format!("unknown failure kind {}", request.kind)));
            }
        };
        self.coordinator.report_failure(&auth, &request.study_id, request.round, &request.reason, kind)?;
        Ok(Response::new(pb::FailureAck {}))
    }

    async fn declare_budget(
        &self,
        request: Request<pb::BudgetDeclaration>,
    ) -> Result<Response<pb::BudgetResponse>, Status> {
        let request = bound(&self.coordinator, request, |r| &r.pdc_id)?;
        let newly_declared = self.coordinator.declare_budget(
            &request.pdc_id,
            &request.dataset,
            request.epsilon,
            request.delta,
            &request.signature,
        )?;
        Ok(Response::new(pb::BudgetResponse { newly_declared }))
    }

    async fn rotate_key(&self, request: Request<pb::KeyRotation>) -> Result<Response<pb::KeyRotationResponse>, Status> {
        let request = bound(&self.coordinator, request, |r| &r.pdc_id)?;
        self.coordinator.rotate_key(
            &request.pdc_id,
            &request.new_public_key,
            &request.old_key_signature,
            &request.new_key_signature,
        )?;
        Ok(Response::new(pb::KeyRotationResponse {}))
    }

    async fn submit_statistics(
        &self,
        request: Request<pb::StatisticsSubmission>,
    ) -> Result<Response<pb::StatisticsReceipt>, Status> {
        let request = bound(&self.coordinator, request, |r| r.pdc_id.as_str())?;
        let kind = match pb::StatisticKind::try_from(request.kind) {
            Ok(pb::StatisticKind::FeatureSummary) => StatisticKind::FeatureSummary,
            Ok(pb::StatisticKind::CohortCounts) => StatisticKind::CohortCounts,
            _ => return Err(Status::invalid_argument(format!("unknown statistic kind {}", request.kind))),
        };
        let release = StatisticsRelease {
            scope: request.scope,
            pdc_id: request.pdc_id,
            kind,
            dataset: request.dataset,
            noise_multiplier: request.noise_multiplier,
            values: request.values,
            epsilon: request.epsilon,
            delta: request.delta,
        };
        let answers = self.coordinator.submit_statistics(release, &request.signature)?;
        Ok(Response::new(pb::StatisticsReceipt { answers }))
    }
}

impl FederationApi {
    /// An upload: the header is checked before the body is read, and the rest runs in the sender's span.
    ///
    /// A broken stream leaves the acknowledged prefix as the PDC's partial upload, and so does a chunk refused for
    /// how it travels (offset, running hash, size, compression): the PDC may resume. A chunk refused for its
    /// content (a value that is not finite) refuses the whole update, records the rejection and deletes it.
    async fn receive_update(
        &self,
        peer: Peer,
        mut parts: Streaming<pb::UpdatePart>,
    ) -> Result<Response<pb::UpdateReceipt>, Status> {
        // Nothing exists of an upload before its header: a stream that never sends one is ended with nothing
        // to clean up, rather than held open for as long as its sender likes.
        let first = tokio::time::timeout(self.first_message_timeout, parts.message()).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "no upload header within {} ms (limits.first_message_timeout_ms)",
                self.first_message_timeout.as_millis()
            ))
        })?;
        let (header, resume_offset, compression) = match first? {
            Some(pb::UpdatePart { part: Some(pb::update_part::Part::Header(header)) }) => {
                let (resume_offset, compression) = (header.resume_offset, compression_from_pb(header.compression)?);
                (header_from_pb(header)?, resume_offset, compression)
            }
            Some(_) => return Err(Status::invalid_argument("the first message of an upload must be its header")),
            None => return Err(Status::invalid_argument("empty upload")),
        };
        peer.check_pdc(&self.coordinator, &header.contribution.pdc_id)?;
        let span = tracing::info_span!(
            "upload",
            study = %header.contribution.study_id,
            round = header.contribution.round,
            pdc = %header.contribution.pdc_id
        );
        let metrics = Arc::clone(self.coordinator.metrics());
        let body = async {
            let stream = self.coordinator.begin_update(&header, resume_offset)?;
            if resume_offset > 0 {
                tracing::info!(resume_offset, "upload resumed");
                metrics.upload_resumed();
            }
            let mut inflater = Inflater::new(compression);
            while let Some(part) = parts.message().await? {
                let chunk = match part.part {
                    Some(pb::update_part::Part::Chunk(chunk)) => chunk,
                    _ => return Err(Status::invalid_argument("an upload has one header, then only chunks")),
                };
                let data = inflater.inflate(&chunk.data)?;
                metrics.update_chunk_received(data.len() as u64, chunk.data.len() as u64);
                let running_hash = (!chunk.running_hash.is_empty()).then_some(chunk.running_hash.as_slice());
                if let Err(error) = stream.append(chunk.offset, data, running_hash) {
                    match &error {
                        Error::InvalidUpdate { .. } => {
                            self.coordinator.reject(&header.contribution, &error);
                            self.coordinator.discard_update(stream);
                        }
                        // The partial file no longer matches what was acknowledged.
                        Error::Archive(_) => self.coordinator.discard_update(stream),
                        _ => {}
                    }
                    return Err(error.into());
                }
            }
            let (id, received) = self.coordinator.finish_update(&header, stream)?;
            Ok::<_, Status>(Response::new(pb::UpdateReceipt {
                update_id: hex::encode(id),
                received_in_round: received,
            }))
        };
        tracing::Instrument::instrument(body, span).await
    }
}

/// The largest chunk on the wire: 1 MiB of data, or its zstd frame, which for incompressible data is slightly
/// larger.
fn max_wire_chunk_bytes(compression: pb::Compression) -> usize {
    match compression {
        pb::Compression::None => MAX_CHUNK_BYTES,
        pb::Compression::Zstd => zstd::zstd_safe::compress_bound(MAX_CHUNK_BYTES),
    }
}

/// Undoes a stream's chunk compression, one chunk at a time into one reused buffer, never past
/// [`MAX_CHUNK_BYTES`]: a frame that would decompress to more is refused before it is, so a small frame cannot make
/// the coordinator allocate more than a chunk (a zip bomb).
struct Inflater {
    compression: pb::Compression,
    context: Option<zstd::bulk::Decompressor<'static>>,
    buffer: Vec<u8>,
}

impl Inflater {
    fn new(compression: pb::Compression) -> Self {
        Self { compression, context: None, buffer: Vec::new() }
    }

    fn inflate<'a>(&'a mut self, data: &'a [u8]) -> Result<&'a [u8], Status> {
        let limit = max_wire_chunk_bytes(self.compression);
        if data.len() > limit {
            return Err(Error::TooLarge(format!("chunk of {} bytes exceeds the {limit}-byte limit", data.len())).into());
        }
        if self.compression == pb::Compression::None {
            return Ok(data);
        }
        if self.context.is_none() {
            self.context = Some(zstd::bulk::Decompressor::new().map_err(Error::Archive)?);
        }
        let context = self.context.as_mut().expect("made above");
        self.buffer.resize(MAX_CHUNK_BYTES, 0);
        let size = context.decompress_to_buffer(data, self.buffer.as_mut_slice()).map_err(|error| {
            if error.to_string().contains("too small") {
                Error::TooLarge(format!("a zstd chunk decompresses to more than the {MAX_CHUNK_BYTES}-byte limit"))
            } else {
                Error::InvalidArgument { field: "chunk.data", detail: format!("not a zstd frame: {error}") }
            }
        })?;
        Ok(&self.buffer[..size])
    }
}

fn compression_from_pb(value: i32) -> Result<pb::Compression, Status> {
    pb::Compression::try_from(value).map_err(|_| {
        Status::from(Error::InvalidArgument { field: "compression", detail: format!("unknown compression {value}") })
    })
}

fn hash_from_pb(bytes: &[u8]) -> Result<pdc_ledger::Hash, Status> {
    bytes.try_into().map_err(|_| {
        Status::from(Error::InvalidArgument {
            field: "update_hash",
            detail: format!("expected 32 bytes, got {}", bytes.len()),
        })
    })
}

fn auth_from_pb(auth: Option<pb::SignedRequest>) -> Result<RequestAuth, Status> {
    let auth = auth.ok_or_else(|| Status::unauthenticated("the request carries no signature"))?;
    Ok(RequestAuth {
        pdc_id: auth.pdc_id,
        timestamp_ms: auth.timestamp_ms,
        signature: auth.signature,
        nonce: auth.nonce,
    })
}

fn header_from_pb(header: pb::UpdateHeader) -> Result<UpdateHeader, Status> {
    let update_hash = hash_from_pb(&header.update_hash)?;
    Ok(UpdateHeader {
        contribution: Contribution {
            study_id: header.study_id,
            round: header.round,
            pdc_id: header.pdc_id,
            n_examples: header.n_examples,
            n_parameters: header.n_parameters,
            update_hash,
            train_loss: header.train_loss,
            privacy: header.privacy.map(|claim| PrivacyClaim {
                dataset: claim.dataset,
                noise_multiplier: claim.noise_multiplier,
                sampling_rate: claim.sampling_rate,
                steps: claim.steps,
                clip_norm: claim.clip_norm,
                epsilon: claim.epsilon,
                delta: claim.delta,
            }),
        },
        signature: header.signature,
    })
}

fn model_stream(
    snapshot: ModelSnapshot,
    metrics: Arc<Telemetry>,
    compression: pb::Compression,
) -> ResponseStream<pb::ModelPart> {
    let header = pb::ModelPart {
        part: Some(pb::model_part::Part::Header(pb::ModelHeader {
            study_id: snapshot.study_id.clone(),
            round: snapshot.round,
            n_parameters: snapshot.parameters.len() as u64,
            layout: Some(pb::Layout {
                tensors: snapshot
                    .layout
                    .tensors
                    .iter()
                    .map(|t| pb::TensorLayout {
                        name: t.name.clone(),
                        shape: t.shape.iter().map(|&d| d as u64).collect(),
                    })
                    .collect(),
            }),
            model_hash: hex::encode(snapshot.model_hash),
            model_toml: snapshot.model_toml.clone(),
            compression: compression as i32,
        })),
    };
    let values_per_chunk = MAX_CHUNK_BYTES / 4;
    let n_chunks = snapshot.parameters.len().div_ceil(values_per_chunk);
    let parameters = Arc::clone(&snapshot.parameters);
    // Chunks are encoded one at a time as the client reads them, so a large model is never copied whole.
    let chunks = futures::stream::iter(0..n_chunks).map(move |index| {
        let start = index * values_per_chunk;
        let end = (start + values_per_chunk).min(parameters.len());
        let bytes = pdc_ledger::hash::f32_bytes(&parameters[start..end]);
        let length = bytes.len() as u64;
        let data = match compression {
            pb::Compression::None => bytes,
            pb::Compression::Zstd => {
                zstd::bulk::compress(&bytes, ZSTD_LEVEL).map_err(|e| Status::from(Error::Archive(e)))?
            }
        };
        metrics.model_bytes_sent(length, data.len() as u64);
        let chunk = pb::Chunk { offset: start as u64 * 4, data, running_hash: Vec::new() };
        Ok(pb::ModelPart { part: Some(pb::model_part::Part::Chunk(chunk)) })
    });
    Box::pin(futures::stream::once(async move { Ok(header) }).chain(chunks))
}

fn task_to_pb(task: TaskSpec) -> pb::Task {
    pb::Task {
        study_id: task.study_id,
        round: task.round,
        model_hash: hex::encode(task.model_hash),
        n_parameters: task.n_parameters,
        manifest_toml: task.manifest_toml,
        feature_mean: task.standardizer.mean,
        feature_std: task.standardizer.std,
        deadline_in_ms: task.deadline_in_ms,
        training_seed: task.training_seed,
        query: task.query.map(|query| pb::StatisticsQuery {
            kind: match query.kind {
                StatisticKind::FeatureSummary => pb::StatisticKind::FeatureSummary,
                StatisticKind::CohortCounts => pb::StatisticKind::CohortCounts,
            } as i32,
            noise_multiplier: query.noise_multiplier,
            bounds: query
                .bounds
                .iter()
                .map(|bounds| pb::FeatureRange { lower: bounds.lower(), upper: bounds.upper() })
                .collect(),
            label: query.label,
        }),
    }
}

fn is_terminal(state: StudyState) -> bool {
    matches!(state, StudyState::Finished | StudyState::Stopped | StudyState::Failed)
}

fn state_to_pb(state: StudyState) -> pb::StudyState {
    match state {
        StudyState::Created => pb::StudyState::Created,
        StudyState::Recruiting => pb::StudyState::Recruiting,
        StudyState::Running => pb::StudyState::Running,
        StudyState::Finished => pb::StudyState::Finished,
        StudyState::Stopped => pb::StudyState::Stopped,
        StudyState::Failed => pb::StudyState::Failed,
    }
}

fn metrics_to_pb(metrics: &pdc_models::Metrics) -> pb::Metrics {
    pb::Metrics {
        loss: metrics.loss,
        accuracy: metrics.accuracy,
        auroc: metrics.auroc,
        mse: metrics.mse,
        n_examples: metrics.n_examples as u64,
    }
}

fn round_to_pb(record: &RoundRecord) -> pb::RoundSummary {
    pb::RoundSummary {
        round: record.round,
        participants: record.participants.clone(),
        contributors: record.contributors.clone(),
        validation: Some(metrics_to_pb(&record.validation)),
        model_hash: hex::encode(record.model_hash),
        privacy: record
            .privacy
            .iter()
            .map(|(pdc_id, epsilon, delta)| pb::PdcEpsilon { pdc_id: pdc_id.clone(), epsilon: *epsilon, delta: *delta })
            .collect(),
    }
}

fn status_to_pb(status: &StudyStatus) -> pb::StudyStatus {
    pb::StudyStatus {
        study_id: status.study_id.clone(),
        name: status.name.clone(),
        state: state_to_pb(status.state) as i32,
        current_round: status.current_round,
        total_rounds: status.total_rounds,
        rounds: status.rounds.iter().map(round_to_pb).collect(),
        hospitals: status
            .hospitals
            .iter()
            .map(|(id, stats)| pb::HospitalSummary {
                pdc_id: id.clone(),
                examples: stats.examples,
                rounds_joined: stats.rounds_joined,
                updates_rejected: stats.updates_rejected,
                utility: stats.utility,
                reward: stats.reward,
                strikes: stats.strikes,
                epsilon: stats.epsilon,
                budget_exhausted: stats.budget_exhausted,
            })
            .collect(),
        detail: status.detail.clone(),
        consented: status.consented.clone(),
        warnings: status.warnings.clone(),
    }
}

fn event_to_pb(event: &StudyEvent) -> pb::StudyEvent {
    use pb::study_event::Event as E;
    let event = match event {
        StudyEvent::Status(status) => E::Status(status_to_pb(status)),
        StudyEvent::RoundOpened { round, participants, deadline_in_ms } => E::RoundOpened(pb::RoundOpened {
            round: *round,
            participants: participants.clone(),
            deadline_ms: *deadline_in_ms,
        }),
        StudyEvent::RoundClosed(record) => E::RoundClosed(round_to_pb(record)),
        StudyEvent::UpdateRejected { round, pdc_id, reason } => {
            E::UpdateRejected(pb::UpdateRejected { round: *round, pdc_id: pdc_id.clone(), reason: reason.clone() })
        }
        StudyEvent::Standardized { contributors, mean, std } => E::Standardized(pb::StandardizationFitted {
            contributors: contributors.clone(),
            mean: mean.clone(),
            std: std.clone(),
        }),
    };
    pb::StudyEvent { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unary calls get the request timeout; a feasibility query its own wait on top; an upload none as a whole.
    #[test]
    fn only_calls_that_answer_at_once_get_the_request_timeout() {
        let unary = Duration::from_secs(120);
        assert_eq!(deadline_of("CreateStudy", unary), Some(unary));
        assert_eq!(deadline_of("WaitTasks", unary), Some(unary));
        assert_eq!(deadline_of("Feasibility", unary), Some(unary + MAX_FEASIBILITY_TIMEOUT));
        assert_eq!(deadline_of("SubmitUpdate", unary), None);
    }

    /// A handler that never answers.
    #[derive(Clone)]
    struct Never;

    impl tonic::codegen::Service<HttpRequest> for Never {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<HttpResponse, std::convert::Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: HttpRequest) -> Self::Future {
            std::future::pending()
        }
    }

    fn call(path: &str) -> HttpRequest {
        tonic::codegen::http::Request::builder().uri(path).body(tonic::body::Body::empty()).unwrap()
    }

    /// A handler past its deadline is answered `DeadlineExceeded` in its place; an upload is never cut as a whole.
    #[tokio::test]
    async fn a_handler_past_its_deadline_is_answered_deadline_exceeded() {
        use tonic::codegen::Service as _;
        let mut service = Deadlines::new(Never, Duration::from_millis(50));
        let response = service.call(call("/pdc.v1.StudyService/CreateStudy")).await.unwrap();
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(status.message(), "CreateStudy took longer than its deadline of 50ms (limits.request_timeout_secs)");
        let upload = service.call(call("/pdc.v1.FederationService/SubmitUpdate"));
        assert!(tokio::time::timeout(Duration::from_millis(200), upload).await.is_err(), "an upload is not cut");
    }
}
