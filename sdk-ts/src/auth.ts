/** Credentials the plugin never sees: placeholders the host fills in as it sends. */

/** `{{secret:NAME}}`: the host replaces it with the secret's value in a header. */
export function secretPlaceholder(name: string): string {
  return `{{secret:${name}}}`;
}

/**
 * The `Authorization` value for HTTP Basic auth with the credentials in secret `name`. The host
 * fills the placeholder verbatim and cannot base64-encode, so the secret holds the ready value
 * `base64("user:password")`.
 */
export function basicPlaceholder(name: string): string {
  return `Basic ${secretPlaceholder(name)}`;
}

/** The `Authorization` value for a bearer token kept in secret `name`. */
export function bearerPlaceholder(name: string): string {
  return `Bearer ${secretPlaceholder(name)}`;
}
