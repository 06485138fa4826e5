/**
 * Twilio Programmable Messaging (SMS), REST API version 2010-04-01, written in TypeScript: the
 * same vendor mapping as the Rust adapter `plugins/sms-twilio`, to show that a vendor team can
 * write an adapter in its own language against the same contract.
 *
 * Each delivery is one `POST {endpoint}/2010-04-01/Accounts/{AccountSid}/Messages.json` with a
 * form body `To`, `From` (or `MessagingServiceSid`) and `Body`; a batch is sent concurrently.
 * Auth is HTTP Basic from the secret named by `credentials_secret`, which holds the ready value
 * `base64("AccountSid:AuthToken")` (the host fills placeholders verbatim).
 *
 * Config keys: `account_sid`, and one of `from` or `messaging_service_sid` (required);
 * `endpoint`, `credentials_secret`.
 */
import {
  Config,
  Refusal,
  RequestBuilder,
  defineAdapter,
  delivered,
  describeError,
  header,
  invalidRecipient,
  isSuccess,
  json,
  log,
  parseSms,
  pluginInfo,
  rejected,
  retry,
  retryAfterMs,
  sendAll,
  type Delivery,
  type Outcome,
  type Request,
  type Response,
} from "@switchboard/adapter-sdk";

const DEFAULT_ENDPOINT = "https://api.twilio.com";
const DEFAULT_CREDENTIALS_SECRET = "basic_auth";

/** Twilio error codes the adapter branches on; every other code is passed on as `rejected`. */
const CODE = {
  /** Credentials refused (HTTP 401). */
  AUTHENTICATE: 20003,
  /** Too many concurrent requests (HTTP 429). */
  TOO_MANY_REQUESTS: 20429,
  /** The `To` number is not a valid phone number. */
  INVALID_TO: 21211,
  /** The `From` sender's queue is full; it drains at the sender's rate. */
  FROM_QUEUE_FULL: 21611,
  /** The `To` number is not a mobile number. */
  NOT_MOBILE: 21614,
} as const;

interface Twilio {
  messagesUrl: string;
  /** `["From", number]` or `["MessagingServiceSid", sid]`: Twilio wants exactly one. */
  sender: [string, string];
  credentialsSecret: string;
}

function nonEmpty(config: Config, key: string): string | undefined {
  const value = config.get(key)?.trim();
  return value ? value : undefined;
}

function readConfig(config: Config): Twilio {
  const accountSid = nonEmpty(config, "account_sid");
  if (accountSid === undefined) throw new Refusal("missing config key `account_sid`");
  const from = nonEmpty(config, "from");
  const service = nonEmpty(config, "messaging_service_sid");
  if (from !== undefined && service !== undefined) {
    throw new Refusal("set only one of `from` and `messaging_service_sid`, not both");
  }
  const sender: [string, string] | undefined =
    from !== undefined
      ? ["From", from]
      : service !== undefined
        ? ["MessagingServiceSid", service]
        : undefined;
  if (sender === undefined) {
    throw new Refusal("set one of the config keys `from` or `messaging_service_sid`");
  }
  const endpoint = config.getOr("endpoint", DEFAULT_ENDPOINT).replace(/\/+$/, "");
  return {
    messagesUrl: `${endpoint}/2010-04-01/Accounts/${accountSid}/Messages.json`,
    sender,
    credentialsSecret: config.getOr("credentials_secret", DEFAULT_CREDENTIALS_SECRET),
  };
}

function messageRequest(twilio: Twilio, delivery: Delivery): Request {
  const sms = parseSms(delivery.content);
  return RequestBuilder.post(twilio.messagesUrl)
    .basicAuthSecret(twilio.credentialsSecret)
    .header("accept", "application/json")
    .form([["To", delivery.recipient], twilio.sender, ["Body", sms.body]])
    .build();
}

/** The parts of a Twilio reply the adapter reads: `{code, message, more_info, status}`. */
interface Reply {
  body: unknown;
  code?: number;
  message: string;
}

function readReply(response: Response): Reply {
  const body = json(response);
  const fields = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
  // Twilio sends the code as a number; a string is accepted in case a proxy rewrote it.
  const raw = fields.code;
  const code =
    typeof raw === "number" ? raw : typeof raw === "string" && /^\d+$/.test(raw) ? Number(raw) : undefined;
  const message = typeof fields.message === "string" ? fields.message : "no message";
  return { body, code, message };
}

function describeReply(reply: Reply, status: number): string {
  return reply.code !== undefined ? `${reply.code}: ${reply.message}` : `HTTP ${status}: ${reply.message}`;
}

/** A Twilio reply as an outcome: by the Twilio error code where it decides, else the status. */
function classify(response: Response, reply: Reply): Outcome {
  const status = response.status;
  if (isSuccess(response)) {
    const sid = (reply.body as { sid?: unknown } | undefined)?.sid;
    return typeof sid === "string" && sid !== ""
      ? delivered(sid)
      : retry("success reply without a message sid");
  }
  const after = retryAfterMs(header(response, "retry-after"));
  const why = describeReply(reply, status);
  const code = reply.code;
  if (code === CODE.INVALID_TO || code === CODE.NOT_MOBILE) return invalidRecipient(why);
  if (status === 429 || code === CODE.TOO_MANY_REQUESTS) return retry(why, after);
  // Credentials are the operator's to fix, and no single delivery is at fault: retrying keeps
  // every delivery while the router fails over to another SMS vendor.
  if (status === 401 || code === CODE.AUTHENTICATE) return retry(`credentials refused: ${why}`);
  if (code === CODE.FROM_QUEUE_FULL) return retry(why, after);
  if (status >= 500 && status <= 599) return retry(why, after);
  if (status >= 400 && status <= 499) {
    return code !== undefined ? rejected(String(code), reply.message) : rejected(`HTTP_${status}`, why);
  }
  // Twilio answers 2xx, 4xx or 5xx; anything else came from something in between.
  return retry(why, after);
}

export const { describe, init, deliver } = defineAdapter<Twilio>({
  describe: () =>
    pluginInfo("sms-twilio-ts", "0.1.0", "sms", { maxBatch: 50, wantsHosts: ["api.twilio.com"] }),

  init: readConfig,

  deliver(twilio, batch) {
    const outcomes: Array<Outcome | undefined> = batch.map(() => undefined);
    const requests: Request[] = [];
    const sentIndex: number[] = [];
    batch.forEach((delivery, i) => {
      try {
        requests.push(messageRequest(twilio, delivery));
        sentIndex.push(i);
      } catch (why) {
        // Content that does not parse is rejected without a request.
        outcomes[i] = rejected("INVALID_CONTENT", why instanceof Error ? why.message : String(why));
      }
    });
    let credentialsRefused = false;
    sendAll(requests).forEach((sent, j) => {
      const i = sentIndex[j];
      if (sent.ok) {
        const reply = readReply(sent.response);
        credentialsRefused ||= reply.code === CODE.AUTHENTICATE;
        outcomes[i] = classify(sent.response, reply);
      } else {
        outcomes[i] = retry(describeError(sent.error));
      }
    });
    // Once per call, not once per delivery: the operator has to fix the secret.
    if (credentialsRefused) {
      log.error(
        `Twilio refused the credentials (20003): check \`account_sid\` and the secret \`${twilio.credentialsSecret}\``,
      );
    }
    return outcomes.map((o) => o ?? retry("no outcome"));
  },
});
