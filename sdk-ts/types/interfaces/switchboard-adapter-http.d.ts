declare module 'switchboard:adapter/http@0.1.0' {
  /**
   * Sends one request and waits for its response, within the call's deadline.
   */
  export function send(req: Request): Response;
  /**
   * Sends all requests concurrently (at most `requests_in_flight_per_call` at once); the
   * results come back in request order, one per request.
   */
  export function sendAll(reqs: Array<Request>): Array<Result<Response, HttpError>>;
  /**
   * One request.
   */
  export interface Request {
    /**
     * `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or another token; a malformed one is
     * a `protocol` error.
     */
    method: string,
    /**
     * An absolute `https://` or `http://` URL; any other scheme is `denied`.
     */
    url: string,
    /**
     * Header values may hold `{{secret:NAME}}`; the host fills them in as it sends.
     */
    headers: Array<[string, string]>,
    /**
     * The request body; empty for none.
     */
    body: Uint8Array,
  }
  /**
   * The vendor's answer, whatever its status: a 4xx or 5xx is a response, not an error.
   */
  export interface Response {
    /**
     * The HTTP status code.
     */
    status: number,
    /**
     * Response headers, names lower-case.
     */
    headers: Array<[string, string]>,
    /**
     * The whole body (at most 8 MiB).
     */
    body: Uint8Array,
  }
  /**
   * Why a request got no response. Whether the vendor may have seen the request decides where
   * a retry may go: after `denied` and `connect` nothing was sent, so the host may fail over
   * to another vendor; after `timeout` and `protocol` the vendor may have acted on it, so the
   * retry stays with the same vendor.
   */
  export type HttpError = HttpErrorDenied | HttpErrorTimeout | HttpErrorConnect | HttpErrorProtocol;
  /**
   * Refused by the host before anything was sent: a host or redirect not granted, an
   * address not public, a plain-http downgrade, a secret placeholder the plugin does not
   * own, a scheme other than http(s), or the call's request limit. The payload says which.
   */
  export interface HttpErrorDenied {
    tag: 'denied',
    val: string,
  }
  /**
   * The call's deadline passed before the vendor answered (or before a place among the
   * plugin's requests in flight came free).
   */
  export interface HttpErrorTimeout {
    tag: 'timeout',
  }
  /**
   * No connection could be made: DNS failure, refused, connect timeout, TLS handshake.
   * Nothing reached the vendor. The payload is the transport's message.
   */
  export interface HttpErrorConnect {
    tag: 'connect',
    val: string,
  }
  /**
   * The exchange broke after the connection was made: a malformed URL or method, a reset,
   * a bad redirect, a body over its limit, the call's transfer budget spent. The payload
   * says which.
   */
  export interface HttpErrorProtocol {
    tag: 'protocol',
    val: string,
  }
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
