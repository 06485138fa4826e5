/**
 * The plugin-scoped cache that outlives the instance (instances are fresh for every call):
 * tokens survive between calls and hot swaps. Bounded by the host; a miss must be survivable.
 */
import { get as hostGet, set as hostSet } from "switchboard:adapter/cache@0.1.0";

/** The text stored under `key`, unless it expired or was never stored. */
export function getText(key: string): string | undefined {
  const value = hostGet(key);
  return value === undefined ? undefined : new TextDecoder().decode(value);
}

/** Stores `value` under `key` for `ttlMs` milliseconds (0 removes it). */
export function setText(key: string, value: string, ttlMs: number): void {
  hostSet(key, new TextEncoder().encode(value), BigInt(Math.max(0, Math.floor(ttlMs))));
}
