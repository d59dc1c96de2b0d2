//! The vend flow, a state machine persisted in the `vends` table. Each step's side effect is
//! idempotent (inventory `Reserve` by reference, payment `Charge` by order id and `Refund` by
//! key, the gateway's `SendCommand` by command id, commit and release are idempotent), and the
//! step is written to the database before its side effect runs. So a vend interrupted anywhere
//! (crash, peer down) is finished or compensated by running its current step again: on the next
//! call, or by the recovery sweep at start and every `sweep_every`.
//!
//! ```text
//! RESERVE ─ok─► CHARGE ─ok─► DISPENSE ─ack OK─► COMMIT ─► DISPENSED (vend.completed)
//!    │ offline/     │ declined     │ jam/offline/timeout
//!    │ no stock     ▼              ▼
//!    ▼           RELEASE ◄──── REFUND         RELEASE ─► FAILED / PAYMENT_DECLINED /
//!  FAILED                                                FAILED_REFUNDED (vend.failed)
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_runtime::work_queue::{WorkHandle, WorkQueue, WorkQueueOptions, WorkSource};

use mesh_contracts::events::v1::{VendCompleted, VendFailed};
use mesh_contracts::inventory::v1::{
    CommitReservationRequest, ReleaseReservationRequest, ReserveRequest, StockLine,
};
use mesh_contracts::iot::v1::{
    Command, CommandResult, Dispense, GetDeviceSessionRequest, SendCommandRequest, SessionState,
    command::Action,
};
use mesh_contracts::payment::v1::{ChargeRequest, GetPaymentRequest, PaymentStatus, RefundRequest};
use mesh_contracts::vm::v1::VendStatus;
use mesh_runtime::Database;
use mesh_runtime::domain::ServiceError;
use mesh_runtime::outbox::Event;
use tonic::Code;

use crate::error::{CommonErrors, VmError};
use crate::peers::Peers;
use crate::store::{self, VendRow};

type Result<T> = std::result::Result<T, VmError>;

/// Steps of a PENDING vend.
pub mod step {
    /// Check the machine is online, then reserve one unit.
    pub const RESERVE: &str = "RESERVE";
    /// Charge the card.
    pub const CHARGE: &str = "CHARGE";
    /// Send the dispense command and wait for the ack.
    pub const DISPENSE: &str = "DISPENSE";
    /// Commit the reservation; the vend is DISPENSED.
    pub const COMMIT: &str = "COMMIT";
    /// Refund the charge, then release.
    pub const REFUND: &str = "REFUND";
    /// Release the reservation (if any); the vend ends in its final failure status.
    pub const RELEASE: &str = "RELEASE";
}

/// Runs vends to their end.
#[derive(Debug, Clone)]
pub struct Flow {
    db: Database,
    peers: Peers,
    /// How long a dispense command may wait for its ack (and when it expires on the device).
    pub dispense_timeout: Duration,
    running: Arc<Mutex<HashSet<String>>>,
}

fn failed(v: &mut VendRow, next: &str, status: VendStatus, reason: impl Into<String>) {
    v.step = next.to_string();
    v.final_status = store::status_name(status).to_string();
    v.vend.failure_reason = reason.into();
}

impl Flow {
    /// A flow over `db` calling `peers`.
    pub fn new(db: Database, peers: Peers, dispense_timeout: Duration) -> Self {
        Self {
            db,
            peers,
            dispense_timeout,
            running: Arc::default(),
        }
    }

    /// Runs vend `id` until it is final, or until a step fails for a reason that may pass (a
    /// peer unavailable): then it stays PENDING at that step for the next attempt. One driver
    /// per vend in this process; a second caller gets the vend as it is.
    pub async fn drive(&self, id: &str) -> Result<VendRow> {
        let claimed = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        let result = if claimed {
            self.run(id).await
        } else {
            self.load(id).await
        };
        if claimed {
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        result
    }

    async fn load(&self, id: &str) -> Result<VendRow> {
        store::vend(self.db.pool(), id)
            .await?
            .ok_or_else(|| VmError::not_found("vend", id))
    }

    async fn run(&self, id: &str) -> Result<VendRow> {
        loop {
            let mut v = self.load(id).await?;
            if v.vend.status != VendStatus::Pending as i32 {
                return Ok(v);
            }
            match v.step.as_str() {
                step::RESERVE => self.reserve(&mut v).await?,
                step::CHARGE => self.charge(&mut v).await?,
                step::DISPENSE => self.dispense(&mut v).await?,
                step::COMMIT => return self.commit(v).await,
                step::REFUND => self.refund(&mut v).await?,
                step::RELEASE => return self.release(v).await,
                other => {
                    return Err(VmError::precondition(format!(
                        "vend `{id}` is at an unknown step `{other}`"
                    )));
                }
            }
            let mut tx = self.db.begin().await?;
            store::set_step(&mut tx, &v).await?;
            tx.commit().await?;
        }
    }

    async fn reserve(&self, v: &mut VendRow) -> Result<()> {
        let session = self
            .peers
            .gateway
            .clone()
            .get_device_session(GetDeviceSessionRequest {
                machine_id: v.vend.machine_id.clone(),
            })
            .await;
        let online = match session {
            Ok(s) => s
                .into_inner()
                .session
                .is_some_and(|s| s.state == SessionState::Connected as i32),
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => return Err(VmError::peer("iot-gateway")(s)),
        };
        if !online {
            failed(v, step::RELEASE, VendStatus::Failed, "machine offline");
            return Ok(());
        }
        let reserved = self
            .peers
            .inventory
            .clone()
            .reserve(ReserveRequest {
                reference_id: format!("vend:{}", v.vend.id),
                lines: vec![StockLine {
                    product_id: v.vend.product_id.clone(),
                    location_id: v.vend.machine_id.clone(),
                    quantity: 1,
                }],
                ttl: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                reservation_id: String::new(),
            })
            .await;
        match reserved {
            Ok(r) => {
                v.vend.reservation_id =
                    r.into_inner().reservation.map(|r| r.id).unwrap_or_default();
                v.step = step::CHARGE.into();
            }
            Err(s) if s.code() == Code::FailedPrecondition => {
                failed(
                    v,
                    step::RELEASE,
                    VendStatus::Failed,
                    format!("out of stock: {}", s.message()),
                );
            }
            Err(s) => return Err(VmError::peer("inventory")(s)),
        }
        Ok(())
    }

    async fn charge(&self, v: &mut VendRow) -> Result<()> {
        let mut payment = self.peers.payment.clone();
        let charged = payment
            .charge(ChargeRequest {
                order_id: format!("vend:{}", v.vend.id),
                amount: v.vend.price.clone(),
                payment_method: Some(mesh_contracts::common::v1::PaymentMethod {
                    method: Some(
                        mesh_contracts::common::v1::payment_method::Method::CardToken(
                            v.card_token.clone(),
                        ),
                    ),
                }),
                customer_id: v.vend.customer_id.clone(),
                description: format!("vend {} {}", v.vend.machine_id, v.vend.slot),
            })
            .await;
        let mut p = match charged {
            Ok(r) => r.into_inner().payment.unwrap_or_default(),
            Err(s) if s.code() == Code::InvalidArgument || s.code() == Code::FailedPrecondition => {
                failed(
                    v,
                    step::RELEASE,
                    VendStatus::PaymentDeclined,
                    format!("payment refused: {}", s.message()),
                );
                return Ok(());
            }
            Err(s) => return Err(VmError::peer("payment")(s)),
        };
        // An outcome the provider has not given yet: ask again for a little while.
        for _ in 0..20 {
            if p.status != PaymentStatus::Pending as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            p = payment
                .get_payment(GetPaymentRequest { id: p.id.clone() })
                .await
                .map_err(VmError::peer("payment"))?
                .into_inner()
                .payment
                .unwrap_or_default();
        }
        v.vend.payment_id.clone_from(&p.id);
        match PaymentStatus::try_from(p.status).unwrap_or_default() {
            PaymentStatus::Succeeded => {
                v.vend.command_id = format!("dispense:{}", v.vend.id);
                v.step = step::DISPENSE.into();
            }
            PaymentStatus::Failed => failed(
                v,
                step::RELEASE,
                VendStatus::PaymentDeclined,
                format!("payment declined: {}", p.decline_message),
            ),
            PaymentStatus::Pending => {
                return Err(VmError::Peer {
                    service: "payment",
                    status: tonic::Status::unavailable("the charge is still pending"),
                });
            }
            // Refunded already (a previous run refunded it): finish the compensation.
            _ => failed(v, step::REFUND, VendStatus::FailedRefunded, "refunded"),
        }
        Ok(())
    }

    async fn dispense(&self, v: &mut VendRow) -> Result<()> {
        let expire = std::time::SystemTime::now() + self.dispense_timeout;
        let d = expire
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut request = tonic::Request::new(SendCommandRequest {
            machine_id: v.vend.machine_id.clone(),
            command: Some(Command {
                command_id: v.vend.command_id.clone(),
                expire_time: Some(prost_types::Timestamp {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                }),
                action: Some(Action::Dispense(Dispense {
                    slot: v.vend.slot.clone(),
                    vend_id: v.vend.id.clone(),
                })),
                ..Default::default()
            }),
            ack_timeout: Some(prost_types::Duration {
                seconds: self.dispense_timeout.as_secs() as i64,
                nanos: self.dispense_timeout.subsec_nanos() as i32,
            }),
        });
        request.set_timeout(self.dispense_timeout + Duration::from_secs(2));
        match self.peers.gateway.clone().send_command(request).await {
            Ok(r) => {
                let ack = r.into_inner().ack.unwrap_or_default();
                if ack.result == CommandResult::Ok as i32 {
                    v.step = step::COMMIT.into();
                } else {
                    let result = CommandResult::try_from(ack.result).unwrap_or_default();
                    let name = result.as_str_name().trim_start_matches("COMMAND_RESULT_");
                    failed(
                        v,
                        step::REFUND,
                        VendStatus::FailedRefunded,
                        format!("{name}: {}", ack.detail),
                    );
                }
            }
            // Offline, no ack before the command expired, or the gateway unreachable: the
            // device cannot run the command any more (it expired), so the charge goes back.
            Err(s) => failed(
                v,
                step::REFUND,
                VendStatus::FailedRefunded,
                format!("dispense failed: {}", s.message()),
            ),
        }
        Ok(())
    }

    async fn refund(&self, v: &mut VendRow) -> Result<()> {
        if !v.vend.payment_id.is_empty() {
            let refunded = self
                .peers
                .payment
                .clone()
                .refund(RefundRequest {
                    payment_id: v.vend.payment_id.clone(),
                    amount: None,
                    reason: format!("vend failed: {}", v.vend.failure_reason),
                    idempotency_key: format!("vend:{}", v.vend.id),
                })
                .await;
            match refunded {
                Ok(_) => {}
                Err(s) if s.code() == Code::FailedPrecondition => {
                    tracing::warn!(vend = %v.vend.id, error = %s, "refund refused as not applicable; treating as refunded");
                }
                Err(s) => return Err(VmError::peer("payment")(s)),
            }
        }
        v.step = step::RELEASE.into();
        Ok(())
    }

    async fn commit(&self, v: VendRow) -> Result<VendRow> {
        if let Err(s) = self
            .peers
            .inventory
            .clone()
            .commit_reservation(CommitReservationRequest {
                reservation_id: v.vend.reservation_id.clone(),
            })
            .await
        {
            if s.code() != Code::FailedPrecondition {
                return Err(VmError::peer("inventory")(s));
            }
            // The item is out and paid for; the stock record is what is off.
            tracing::warn!(vend = %v.vend.id, error = %s, "reservation could not be committed after a dispense");
        }
        let mut tx = self.db.begin().await?;
        if store::finish(&mut tx, &v.vend.id, VendStatus::Dispensed, "").await? {
            store::add_units(&mut tx, &v.vend.machine_id, &v.vend.slot, -1).await?;
            tx.emit(
                Event::new(
                    "vend.completed",
                    &v.vend.id,
                    "VendCompleted",
                    &VendCompleted {
                        vend_id: v.vend.id.clone(),
                        machine_id: v.vend.machine_id.clone(),
                        store_id: v.store_id.clone(),
                        slot: v.vend.slot.clone(),
                        product_id: v.vend.product_id.clone(),
                        price: v.vend.price.clone(),
                        payment_id: v.vend.payment_id.clone(),
                        customer_id: v.vend.customer_id.clone(),
                    },
                )
                .correlation(v.vend.id.clone()),
            )
            .await?;
        }
        tx.commit().await?;
        self.load(&v.vend.id).await
    }

    async fn release(&self, v: VendRow) -> Result<VendRow> {
        if !v.vend.reservation_id.is_empty() {
            let released = self
                .peers
                .inventory
                .clone()
                .release_reservation(ReleaseReservationRequest {
                    reservation_id: v.vend.reservation_id.clone(),
                    reason: format!("vend failed: {}", v.vend.failure_reason),
                })
                .await;
            match released {
                Ok(_) => {}
                Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound => {}
                Err(s) => return Err(VmError::peer("inventory")(s)),
            }
        }
        let status = store::status_of(&v.final_status);
        let status = if status == VendStatus::Unspecified {
            VendStatus::Failed
        } else {
            status
        };
        self.fail(&v, status).await?;
        self.load(&v.vend.id).await
    }

    /// Makes `v` final with a failure `status` and emits `vend.failed`.
    pub async fn fail(&self, v: &VendRow, status: VendStatus) -> Result<()> {
        let mut tx = self.db.begin().await?;
        if store::finish(&mut tx, &v.vend.id, status, &v.vend.failure_reason).await? {
            tx.emit(
                Event::new(
                    "vend.failed",
                    &v.vend.id,
                    "VendFailed",
                    &VendFailed {
                        vend_id: v.vend.id.clone(),
                        machine_id: v.vend.machine_id.clone(),
                        store_id: v.store_id.clone(),
                        slot: v.vend.slot.clone(),
                        product_id: v.vend.product_id.clone(),
                        status: status as i32,
                        reason: v.vend.failure_reason.clone(),
                        payment_id: v.vend.payment_id.clone(),
                        refunded: status == VendStatus::FailedRefunded,
                    },
                )
                .correlation(v.vend.id.clone()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The recovery sweep's queue, scanning every `every` (see [`Flow`]'s [`WorkSource`]).
    pub fn recovery_queue(self, every: Duration) -> WorkQueue<Flow> {
        let options = WorkQueueOptions::new("vend-recovery")
            .concurrency(8)
            .poll_interval(every);
        WorkQueue::new(self, options, WorkHandle::new())
    }
}

/// The recovery sweep: every PENDING vend not being driven here is driven again; one whose step
/// failed because the database or a peer was unavailable is retried after a short backoff.
impl WorkSource for Flow {
    type Item = String;
    type Error = VmError;

    async fn due(&self, limit: usize) -> Result<Vec<String>> {
        let mut ids = store::pending_vends(self.db.pool()).await?;
        ids.truncate(limit);
        Ok(ids)
    }

    async fn process(&self, id: String, _retry: u32) -> Result<()> {
        self.drive(&id).await.map(|_| ())
    }

    fn is_transient(&self, error: &VmError) -> bool {
        match error {
            VmError::Common(ServiceError::Database(e)) => e.is_unavailable(),
            VmError::Peer { status, .. } => status.code() == tonic::Code::Unavailable,
            _ => false,
        }
    }
}
