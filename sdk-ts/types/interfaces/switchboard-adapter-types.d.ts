declare module 'switchboard:adapter/types@0.1.0' {
  /**
   * The traffic class of a request; the host runs each class in its own lane, with its own
   * consumers, budget and call concurrency, so bulk traffic never delays a realtime push.
   * # Variants
   * 
   * ## `"realtime"`
   * 
   * One-to-one, time-critical: one-time codes, chat pushes. Never waits for a batch to fill.
   * ## `"batch"`
   * 
   * Transactional and bulk notifications: batched, and it may wait a few milliseconds.
   * ## `"ads"`
   * 
   * Marketing: the first to be held back when the host is short of memory or vendor capacity.
   */
  export type Priority = 'realtime' | 'batch' | 'ads';
  /**
   * One recipient's delivery. A batch holds deliveries of one channel for one adapter.
   */
  export interface Delivery {
    /**
     * Idempotency key of this recipient's delivery: the request id and the recipient index.
     * Stable across retries and redeliveries; pass it to the vendor where it takes one.
     */
    key: string,
    /**
     * Device token, phone number, or whatever the channel addresses.
     */
    recipient: string,
    /**
     * The channel's content as JSON: `{title, body, data}`, `{template, params}` or `{body}`.
     */
    content: string,
    /**
     * The request's traffic class.
     */
    priority: Priority,
    /**
     * 1 on the first try; the host counts retries.
     */
    attempt: number,
  }
  /**
   * Why a delivery should be tried again, and when.
   */
  export interface RetryInfo {
    /**
     * For operators: what the vendor said (its error code or message). Logged and kept in
     * the retry record; never shown to the recipient.
     */
    reason: string,
    /**
     * The host waits at least this long (the vendor's Retry-After) before the next try, and
     * holds every call to this vendor until then, not just this delivery. The host caps an
     * unreasonable wait (see OPERATIONS.md).
     */
    afterMs?: bigint,
  }
  /**
   * A permanent refusal by the vendor.
   */
  export interface Rejection {
    /**
     * The vendor's own error code, e.g. `INVALID_ARGUMENT`; written to the DLQ record's
     * `sb-vendor-code` header.
     */
    code: string,
    /**
     * For operators: the vendor's message; written to the DLQ record's `sb-reason` header.
     */
    reason: string,
  }
  /**
   * What became of one delivery. `deliver` returns one outcome per delivery, in order.
   */
  export type Outcome = OutcomeDelivered | OutcomeRetry | OutcomeRejected | OutcomeInvalidRecipient;
  /**
   * The vendor accepted it; the payload is the vendor's message id ("" when it gives none).
   */
  export interface OutcomeDelivered {
    tag: 'delivered',
    val: string,
  }
  /**
   * A transient failure: the host backs off and tries again, maybe on another vendor.
   */
  export interface OutcomeRetry {
    tag: 'retry',
    val: RetryInfo,
  }
  /**
   * A permanent failure: the host dead-letters it with the code and reason, or re-sends it
   * on the channel's fallback channel when one is configured.
   */
  export interface OutcomeRejected {
    tag: 'rejected',
    val: Rejection,
  }
  /**
   * The recipient no longer exists (token unregistered, number invalid): a cleanup event,
   * published on the invalid-recipients topic. The payload is the vendor's reason.
   */
  export interface OutcomeInvalidRecipient {
    tag: 'invalid-recipient',
    val: string,
  }
  /**
   * What an adapter says of itself. `describe` is called once per loaded version.
   */
  export interface PluginInfo {
    /**
     * The adapter's name, for logs and `switchboard plugin check`; the operator's config name
     * for it (`[plugins.NAME]`) is what routes deliveries.
     */
    name: string,
    /**
     * The adapter's own version, e.g. `1.4.0`; shown beside the version id (the component's
     * SHA-256) in the admin API and the metrics.
     */
    version: string,
    /**
     * The channel this adapter serves, e.g. `push-android`, `sms`. Every version of one
     * plugin must serve the same channel; the host refuses a version that does not.
     */
    channel: string,
    /**
     * The most deliveries the adapter wants in one `deliver` call. The operator's
     * `max_batch` may lower it, never raise it.
     */
    maxBatch: number,
    /**
     * Hosts the adapter needs to reach (`host` or `host:port`), for the operator to grant
     * in `allowed_hosts`. Informative only: a request to a host not granted is denied
     * whatever this says.
     */
    wantsHosts: Array<string>,
  }
}
