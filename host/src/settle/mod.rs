//! Settle: what each outcome comes to, and the effects that make it durable.
//!
//! - [`decide`]: the pure rule from one outcome (and the delivery's attempts, age and the call's
//!   kind of failure) to a [`Decision`]: final, fallback, another try, or the DLQ;
//! - [`settler`]: carries a decision out: counts it, writes the retry topic or the DLQ, re-sends
//!   on a fallback channel, publishes the result, marks finished deliveries in the dedup store
//!   and only then lets their records finish;
//! - [`outbox`]: the retry topic and the DLQ (one idempotent producer), and [`results`]: the
//!   result and invalidation topics (never awaited);
//! - [`backoff`]: when the next try is due;
//! - [`inspect`] and [`replay`]: what operators read from the DLQ and send back (`dlq list`,
//!   `dlq show`, `dlq replay`).
//!
//! Must never finish a delivery before its outcome is recorded somewhere durable: the vendor
//! accepted it, the DLQ holds it, or the retry topic does. Otherwise the record's offset could be
//! committed while the recipient was never served.

pub mod backoff;
pub mod decide;
pub mod inspect;
pub mod outbox;
pub mod replay;
pub mod results;
pub mod settler;

pub use decide::{Decision, decide};
pub use outbox::{
    DeadLetterReason, HEADER_CODE_BYTES, HEADER_REASON_BYTES, Origin, Outbox, OutboxError,
    ReasonClass, RetryRecord, TRUNCATED_VALUE_BYTES, WirePriority, WriteFailure, classify, headers,
};
pub use settler::{CallContext, Job, Records, Settler};
