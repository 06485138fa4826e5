/**
 * Outbound HTTP through the host, which holds the connections, the TLS, the deadline and the
 * operator's grants. A 4xx or 5xx is a `Response`; an `HttpError` means no response came.
 */
import {
  send as hostSend,
  sendAll as hostSendAll,
  type HttpError,
  type Request,
  type Response,
} from "switchboard:adapter/http@0.1.0";
import { basicPlaceholder, bearerPlaceholder } from "./auth.ts";

export type { HttpError, Request, Response } from "switchboard:adapter/http@0.1.0";

/** A response, or why none came. */
export type Sent = { ok: true; response: Response } | { ok: false; error: HttpError };

/** Sends one request and waits for its answer, within the call's deadline. */
export function send(request: Request): Sent {
  try {
    return { ok: true, response: hostSend(request) };
  } catch (thrown) {
    // The bindings throw the WIT error case wrapped, with the case in `payload`.
    const payload = (thrown as { payload?: HttpError }).payload;
    if (payload !== undefined) return { ok: false, error: payload };
    throw thrown;
  }
}

/** Sends all requests concurrently; the answers come back in request order. */
export function sendAll(requests: Request[]): Sent[] {
  if (requests.length === 0) return [];
  return hostSendAll(requests).map((result) =>
    result.tag === "ok"
      ? { ok: true, response: result.val }
      : { ok: false, error: result.val },
  );
}

const encoder = new TextEncoder();

/** Builds a request, as the Rust SDK's `Request::post(url).header(..).json(..)`. */
export class RequestBuilder {
  readonly method: string;
  readonly url: string;
  private readonly headers: Array<[string, string]> = [];
  private body: Uint8Array = new Uint8Array();

  constructor(method: string, url: string) {
    this.method = method;
    this.url = url;
  }

  static post(url: string): RequestBuilder {
    return new RequestBuilder("POST", url);
  }

  static get(url: string): RequestBuilder {
    return new RequestBuilder("GET", url);
  }

  /** Adds a header; a value may hold `{{secret:NAME}}` placeholders. */
  header(name: string, value: string): this {
    this.headers.push([name, value]);
    return this;
  }

  /** HTTP Basic auth from secret `name` (its value is `base64("user:password")`). */
  basicAuthSecret(name: string): this {
    return this.header("authorization", basicPlaceholder(name));
  }

  /** A bearer token from secret `name`. */
  bearerAuthSecret(name: string): this {
    return this.header("authorization", bearerPlaceholder(name));
  }

  /** A bearer token the plugin obtained itself (an OAuth access token). */
  bearerAuth(token: string): this {
    return this.header("authorization", `Bearer ${token}`);
  }

  /** A JSON body, with its content type. */
  json(value: unknown): this {
    this.body = encoder.encode(JSON.stringify(value));
    return this.header("content-type", "application/json");
  }

  /** A form body (`application/x-www-form-urlencoded`), fields in order. */
  form(fields: Array<[string, string]>): this {
    this.body = encoder.encode(formUrlencode(fields));
    return this.header("content-type", "application/x-www-form-urlencoded");
  }

  /** A raw body. */
  bytes(body: Uint8Array): this {
    this.body = body;
    return this;
  }

  build(): Request {
    return { method: this.method, url: this.url, headers: this.headers, body: this.body };
  }
}

/** Fields encoded as a form body: spaces as `+`, everything but unreserved characters escaped. */
export function formUrlencode(fields: Array<[string, string]>): string {
  const escape = (text: string) => encodeURIComponent(text).replace(/%20/g, "+");
  return fields.map(([name, value]) => `${escape(name)}=${escape(value)}`).join("&");
}

/** A response header's value; names are lower-case on a response. */
export function header(response: Response, name: string): string | undefined {
  const wanted = name.toLowerCase();
  return response.headers.find(([n]) => n === wanted)?.[1];
}

/** The body as text (UTF-8, lossy). */
export function text(response: Response): string {
  return new TextDecoder().decode(response.body);
}

/** The body as JSON, or undefined when it is not JSON. */
export function json(response: Response): unknown {
  try {
    return JSON.parse(text(response));
  } catch {
    return undefined;
  }
}

/** A 2xx status. */
export function isSuccess(response: Response): boolean {
  return response.status >= 200 && response.status < 300;
}

/** A short description of a transport error, for a retry reason. */
export function describeError(error: HttpError): string {
  return error.tag === "timeout" ? "http timeout" : `http ${error.tag}: ${error.val}`;
}
