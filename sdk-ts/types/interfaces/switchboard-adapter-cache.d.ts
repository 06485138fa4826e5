declare module 'switchboard:adapter/cache@0.1.0' {
  /**
   * The value stored under `key`, unless it has expired or was never stored.
   */
  export function get(key: string): Uint8Array | undefined;
  /**
   * Stores `value` under `key` for `ttl-ms` milliseconds. A `ttl-ms` of 0, or a value over
   * 64 KiB, removes the key instead; a key over 256 bytes is ignored.
   */
  export function set(key: string, value: Uint8Array, ttlMs: bigint): void;
}
