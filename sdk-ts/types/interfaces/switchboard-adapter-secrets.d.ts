declare module 'switchboard:adapter/secrets@0.1.0' {
  /**
   * Signs `data` with the plugin's secret `key` (a name under `[plugins.NAME.secrets]`).
   * `alg` is `RS256` (a PEM RSA key, PKCS#8 or PKCS#1), `ES256` (a PEM P-256 key, PKCS#8) or
   * `HS256` (the secret's bytes); ES256 signatures are the 64-byte `r || s` form that JWTs use.
   * The error names the key and what is wrong (not granted, not a key of that kind, an
   * unsupported `alg`), never the secret.
   */
  export function sign(key: string, alg: string, data: Uint8Array): Uint8Array;
}
