/** Outcome constructors, as the Rust SDK's `Outcome::delivered` and friends. */
import type { Outcome } from "switchboard:adapter/types@0.1.0";

/** The vendor accepted it; `messageId` is the vendor's id ("" when it gives none). */
export function delivered(messageId: string): Outcome {
  return { tag: "delivered", val: messageId };
}

/**
 * A transient failure: the host backs off and tries again, maybe on another vendor, no sooner
 * than `afterMs` when given (the vendor's Retry-After).
 */
export function retry(reason: string, afterMs?: number | bigint): Outcome {
  return {
    tag: "retry",
    val: afterMs === undefined ? { reason } : { reason, afterMs: BigInt(afterMs) },
  };
}

/** A permanent refusal: dead-lettered with `code` and `reason`, or sent on the fallback channel. */
export function rejected(code: string, reason: string): Outcome {
  return { tag: "rejected", val: { code, reason } };
}

/** The recipient no longer exists: published on the invalid-recipients topic. */
export function invalidRecipient(reason: string): Outcome {
  return { tag: "invalid-recipient", val: reason };
}

/**
 * A `Retry-After` value given in seconds, as milliseconds. HTTP dates are not parsed, as in the
 * Rust SDK: the vendors we know send seconds, and the host's backoff floor covers a wrong guess.
 */
export function retryAfterMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (!/^\d+$/.test(trimmed)) return undefined;
  return Number(trimmed) * 1000;
}
