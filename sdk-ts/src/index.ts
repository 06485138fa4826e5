/**
 * The Switchboard adapter SDK for TypeScript: the helpers of the Rust SDK (`switchboard-sdk`),
 * over the types `jco guest-types` generates from the WIT this package ships (`wit/`).
 *
 * An adapter module exports `describe`, `init` and `deliver`; `defineAdapter` builds the three
 * from an object, so the adapter's state lives in one place and `init` refusals reach the host
 * as the WIT's `result` error:
 *
 * ```ts
 * import { defineAdapter, delivered } from "@switchboard/adapter-sdk";
 * export const { describe, init, deliver } = defineAdapter({
 *   describe: () => ({ name: "acme", version: "0.1.0", channel: "sms", maxBatch: 50, wantsHosts: [] }),
 *   init: (config) => ({ endpoint: config.getOr("endpoint", "https://api.acme.example") }),
 *   deliver: (state, batch) => batch.map(() => delivered("")),
 * });
 * ```
 *
 * Build a component with `jco componentize` (see README.md): the host runs it like any other.
 */
/// <reference path="../types/adapter.d.ts" />

import type { Delivery, Outcome, PluginInfo } from "switchboard:adapter/types@0.1.0";

export type {
  Delivery,
  Outcome,
  PluginInfo,
  Priority,
} from "switchboard:adapter/types@0.1.0";
export * from "./outcome.ts";
export * from "./http.ts";
export * from "./auth.ts";
export * from "./classify.ts";
export * from "./content.ts";
export * as log from "./log.ts";
export * as cache from "./cache.ts";

/** The operator's config for the plugin (`[plugins.NAME.config]`), as key and value strings. */
export class Config {
  readonly entries: ReadonlyArray<[string, string]>;

  constructor(entries: ReadonlyArray<[string, string]>) {
    this.entries = entries;
  }

  /** The value of `key`, if the operator set it. */
  get(key: string): string | undefined {
    return this.entries.find(([k]) => k === key)?.[1];
  }

  /** The value of `key`, or an `init` refusal naming the missing key. */
  require(key: string): string {
    const value = this.get(key);
    if (value === undefined) throw new Refusal(`missing config key \`${key}\``);
    return value;
  }

  /** The value of `key`, or `fallback` when it is unset. */
  getOr(key: string, fallback: string): string {
    return this.get(key) ?? fallback;
  }
}

/**
 * An `init` refusal: the message reaches the host as `init`'s error, and the host names it when
 * it refuses the plugin's config. Any other exception in `init` counts as a trap.
 */
export class Refusal {
  readonly message: string;
  constructor(message: string) {
    this.message = message;
  }
}

/** An adapter: what it says of itself, how it reads its config, how it delivers a batch. */
export interface Adapter<State> {
  /** Name, version, channel, batch size and wanted hosts. Must not call imports. */
  describe(): PluginInfo;
  /**
   * Reads the config into the adapter's state. Throw a `Refusal` (or a string) to refuse it.
   * Runs on every fresh instance, before `deliver`: instances are never reused between calls.
   */
  init(config: Config): State;
  /** Exactly one outcome per delivery, in order. */
  deliver(state: State, batch: Delivery[]): Outcome[];
}

/** The world's three exports, for `export const { describe, init, deliver } = …`. */
export interface Exports {
  describe(): PluginInfo;
  init(config: Array<[string, string]>): void;
  deliver(batch: Array<Delivery>): Array<Outcome>;
}

/**
 * The world's exports for `adapter`. A refusal from `init` becomes the WIT result's error (the
 * component bindings take a thrown string as `err`); the state it returns is what `deliver`
 * gets.
 */
export function defineAdapter<State>(adapter: Adapter<State>): Exports {
  let state: { value: State } | undefined;
  return {
    describe: () => adapter.describe(),
    init(entries) {
      try {
        state = { value: adapter.init(new Config(entries)) };
      } catch (refused) {
        // A string thrown out of `init` is its `err`; anything else (an unexpected exception)
        // is a fault of the adapter and traps, with its message.
        throw refused instanceof Refusal ? refused.message : refused;
      }
    },
    deliver(batch) {
      if (state === undefined) throw new Error("deliver called before init");
      return adapter.deliver(state.value, batch);
    },
  };
}

/** A `PluginInfo` with the defaults of the Rust SDK's `PluginInfo::new`. */
export function pluginInfo(
  name: string,
  version: string,
  channel: string,
  more: { maxBatch?: number; wantsHosts?: string[] } = {},
): PluginInfo {
  return {
    name,
    version,
    channel,
    maxBatch: Math.max(1, more.maxBatch ?? 1),
    wantsHosts: more.wantsHosts ?? [],
  };
}
