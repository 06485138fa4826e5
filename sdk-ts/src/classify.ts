/**
 * A vendor's reply as an outcome, as the Rust SDK's `classify` module does: by status alone, or
 * by status and JSON body for vendors that answer HTTP 200 and put the failure in the body
 * (`{"isSuccessful": false, "resultCode": -1001}`), which a status check alone would count as
 * delivered. Places in the body are JSON Pointers (RFC 6901).
 */
import type { Outcome } from "switchboard:adapter/types@0.1.0";
import type { Response } from "switchboard:adapter/http@0.1.0";
import { delivered, invalidRecipient, rejected, retry, retryAfterMs } from "./outcome.ts";
import { header, isSuccess, json } from "./http.ts";

/** 408, 429 and 5xx: worth another try. */
export function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status <= 599);
}

/** The status alone: 2xx delivered (no id), 408/429/5xx retried, the rest rejected. */
export function byStatus(response: Response): Outcome {
  const status = response.status;
  if (isSuccess(response)) return delivered("");
  if (retryableStatus(status)) {
    return retry(`HTTP ${status}`, retryAfterMs(header(response, "retry-after")));
  }
  return rejected(`HTTP_${status}`, `HTTP ${status}`);
}

/** Where a reply keeps what the classifier reads, and which codes mean what. */
export interface ClassifierSpec {
  /** Pointer to the vendor's message id; a success without one is retried. */
  messageId?: string;
  /** Pointer to a boolean that must be `true` for success. */
  successFlag?: string;
  /** A check of the whole body, instead of `successFlag`. */
  successWhen?: (body: unknown) => boolean;
  /** Pointer to the vendor's error code. */
  errorCode?: string;
  /** Pointer to the vendor's error message. */
  errorMessage?: string;
  /** Codes that mean "try again". */
  retryCodes?: string[];
  /** Codes that mean "this recipient does not exist". */
  invalidRecipientCodes?: string[];
}

/** The value at a JSON Pointer, or undefined. */
export function pointer(value: unknown, path: string): unknown {
  if (path === "") return value;
  if (!path.startsWith("/")) return undefined;
  let at: unknown = value;
  for (const raw of path.slice(1).split("/")) {
    const token = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    if (Array.isArray(at)) {
      if (!/^(0|[1-9]\d*)$/.test(token)) return undefined;
      at = at[Number(token)];
    } else if (typeof at === "object" && at !== null) {
      at = Object.prototype.hasOwnProperty.call(at, token)
        ? (at as Record<string, unknown>)[token]
        : undefined;
    } else {
      return undefined;
    }
  }
  return at;
}

function textAt(body: unknown, path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  const value = pointer(body, path);
  if (typeof value === "string") return value;
  if (typeof value === "number") return String(value);
  return undefined;
}

function describe(status: number, code?: string, message?: string): string {
  return [`HTTP ${status}`, code, message].filter((p) => p !== undefined).join(": ");
}

/** A classifier of a vendor's replies, described once per adapter. */
export class Classifier {
  private readonly spec: ClassifierSpec;

  constructor(spec: ClassifierSpec) {
    this.spec = spec;
  }

  classify(response: Response): Outcome {
    const { spec } = this;
    const status = response.status;
    const afterMs = retryAfterMs(header(response, "retry-after"));
    const body = json(response);
    const code = textAt(body, spec.errorCode);
    const message = textAt(body, spec.errorMessage);

    if (retryableStatus(status)) return retry(describe(status, code, message), afterMs);
    if (!isSuccess(response)) {
      return code !== undefined
        ? this.forCode(code, message ?? `HTTP ${status}`, afterMs)
        : rejected(`HTTP_${status}`, describe(status, undefined, message));
    }
    const checksBody =
      spec.successFlag !== undefined ||
      spec.successWhen !== undefined ||
      spec.messageId !== undefined;
    if (!checksBody) return delivered("");
    if (body === undefined) {
      return retry(`unreadable reply (HTTP ${status}): the body is not JSON`, afterMs);
    }
    const succeeded = spec.successWhen
      ? spec.successWhen(body)
      : spec.successFlag === undefined || pointer(body, spec.successFlag) === true;
    if (!succeeded) {
      return code !== undefined
        ? this.forCode(code, message ?? `HTTP ${status}`, afterMs)
        : retry(`HTTP ${status} reports a failure without an error code`, afterMs);
    }
    if (spec.messageId === undefined) return delivered("");
    const id = textAt(body, spec.messageId);
    return id
      ? delivered(id)
      : retry(`HTTP ${status} success reply without a message id at ${spec.messageId}`);
  }

  /** What a vendor error code means. */
  forCode(code: string, message: string, afterMs?: number): Outcome {
    if (this.spec.retryCodes?.includes(code)) return retry(`${code}: ${message}`, afterMs);
    if (this.spec.invalidRecipientCodes?.includes(code)) {
      return invalidRecipient(`${code}: ${message}`);
    }
    return rejected(code, message);
  }
}
