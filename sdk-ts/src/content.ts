/**
 * Typed views of a delivery's `content` JSON, one per kind of channel. An adapter answers
 * content that does not parse with `rejected("INVALID_CONTENT", why)`, without a request.
 */

/** `sms`: `{body}`. */
export interface SmsContent {
  body: string;
}

/** `push-android`, `push-ios`: `{title, body, data}`, each optional. */
export interface PushContent {
  title?: string;
  body?: string;
  data: Record<string, unknown>;
}

/** `alimtalk` and other template channels: `{template, params}`. */
export interface TemplateContent {
  template: string;
  params: Record<string, unknown>;
}

/** Content that does not match the channel: the message says what is wrong. */
export class ContentError extends Error {}

function object(content: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(content);
  } catch (e) {
    throw new ContentError(`content does not match the channel: not JSON (${String(e)})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ContentError("content does not match the channel: not a JSON object");
  }
  return value as Record<string, unknown>;
}

function optionalString(value: unknown, field: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") {
    throw new ContentError(`content does not match the channel: \`${field}\` is not a string`);
  }
  return value;
}

function requiredString(value: unknown, field: string): string {
  const text = optionalString(value, field);
  if (text === undefined) {
    throw new ContentError(`content does not match the channel: missing field \`${field}\``);
  }
  return text;
}

function map(value: unknown, field: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new ContentError(`content does not match the channel: \`${field}\` is not an object`);
  }
  return value as Record<string, unknown>;
}

export function parseSms(content: string): SmsContent {
  const o = object(content);
  return { body: requiredString(o.body, "body") };
}

export function parsePush(content: string): PushContent {
  const o = object(content);
  return {
    title: optionalString(o.title, "title"),
    body: optionalString(o.body, "body"),
    data: map(o.data, "data"),
  };
}

export function parseTemplate(content: string): TemplateContent {
  const o = object(content);
  return { template: requiredString(o.template, "template"), params: map(o.params, "params") };
}
